//! Lineage (DESIGN §8): how each owned stored object was made, kept while it lives, so
//! that it can be made again if every copy is lost.

use super::*;

impl OwnerState {
    /// Keeps how `t`'s stored return was made, if it can be made again (a normal task whose
    /// arguments hold no refs or handles inside values) and the lineage budget allows.
    pub(super) fn keep_lineage(&mut self, t: &TaskEntry, fx: &mut Effects) -> bool {
        if t.actor.is_some() || !t.exported.refs.is_empty() || !t.exported.actors.is_empty() {
            return false;
        }
        let live = t.rets().filter(|r| self.objects.contains_key(r)).count() as u32;
        if live == 0 {
            return false;
        }
        // Arguments that can themselves be made again are held by name only; others (put
        // objects, borrowed ones, ones without lineage) by value, which the budget counts.
        let by_name: Vec<bool> = t
            .args
            .iter()
            .map(|a| matches!(a, ArgDraft::Ref(id) if id.owner() == self.me && self.lineage.contains_key(&id.task)))
            .collect();
        let bytes: usize = t
            .args
            .iter()
            .zip(&by_name)
            .map(|(a, named)| match a {
                ArgDraft::Value(v) => v.len(),
                ArgDraft::Ref(_) if *named => 0,
                ArgDraft::Ref(id) => match self.objects.get(id).map(|e| &e.state) {
                    Some(ObjState::Ready(Ready::Stored { size, .. })) => *size as usize,
                    _ => 0,
                },
            })
            .sum();
        if self.lineage_bytes + bytes > self.limits.max_lineage_bytes {
            return false;
        }
        // The task's own holds on its arguments end here: by-value ones pass to the lineage,
        // by-name ones become lineage pins (their values may go).
        for (a, named) in t.args.iter().zip(&by_name) {
            if let (ArgDraft::Ref(id), true) = (a, named) {
                if let Some(e) = self.objects.get_mut(id) {
                    e.rare().lineage_pins += 1;
                }
            }
        }
        let named_refs: Vec<ObjectId> = t
            .args
            .iter()
            .zip(&by_name)
            .filter_map(|(a, n)| match a {
                ArgDraft::Ref(id) if *n => Some(*id),
                _ => None,
            })
            .collect();
        let lin = Lineage {
            returns: t.returns,
            split: t.split,
            live,
            stream: t.stream,
            job: t.job.clone(),
            function: t.function,
            name: t.name.clone(),
            args: t.args.clone(),
            by_name,
            class: t.class,
            retries_left: t.retries_left,
            bytes,
        };
        self.lineage_bytes += bytes;
        if let Some(old) = self.lineage.insert(t.ret.task, lin) {
            self.drop_lineage_of(old, fx);
        }
        self.release_submitted(&named_refs, fx);
        true
    }

    pub(super) fn drop_lineage_of(&mut self, old: Lineage, fx: &mut Effects) {
        self.lineage_bytes = self.lineage_bytes.saturating_sub(old.bytes);
        for (a, named) in old.args.iter().zip(&old.by_name) {
            let ArgDraft::Ref(id) = a else { continue };
            if let Some(e) = self.objects.get_mut(id) {
                if *named {
                    if let Some(r) = e.rare.as_mut() {
                        r.lineage_pins = r.lineage_pins.saturating_sub(1);
                    }
                } else {
                    e.submitted = e.submitted.saturating_sub(1);
                }
                self.maybe_free(*id, fx);
            }
        }
    }

    /// The node `n` is dead: what it stored is lost (made again on demand, from lineage).
    pub fn node_dead(&mut self, n: NodeId) {
        self.dead_nodes.insert(n);
    }

    /// Makes the owned object `id` again: its task runs once more (and, first, the tasks of
    /// its lost arguments), the object is pending until then. An error says why it cannot be.
    pub fn reconstruct(&mut self, id: ObjectId, fx: &mut Effects) -> Result<(), Error> {
        if self.tasks.contains_key(&id.task) {
            return Ok(()); // Already being made again.
        }
        let lost = |why: String| Error::ObjectLost { object: id, reason: why };
        let Some(lin) = self.lineage.get_mut(&id.task) else {
            return Err(lost(
                "every copy was lost, and it cannot be made again: it was `put`, or made by an actor, or its \
                 lineage was not kept (Config::max_lineage_bytes)"
                    .into(),
            ));
        };
        if lin.retries_left == 0 {
            return Err(lost(format!(
                "every copy was lost and task {} has no retries left to make it again",
                lin.name
            )));
        }
        lin.retries_left -= 1;
        let lin = lin.clone();
        // Lost arguments first.
        let mut waiting = 0;
        for a in &lin.args {
            if let ArgDraft::Ref(arg) = a {
                let on_dead = match self.objects.get(arg).map(|e| &e.state) {
                    Some(ObjState::Released) => true,
                    Some(ObjState::Ready(Ready::Stored { node, .. })) => self.dead_nodes.contains(node),
                    _ => false,
                };
                if on_dead && arg.owner() == self.me {
                    self.reconstruct(*arg, fx)?;
                }
            }
        }
        for a in &lin.args {
            if let ArgDraft::Ref(arg) = a {
                if let Some(e) = self.objects.get_mut(arg) {
                    e.submitted += 1;
                    if matches!(e.state, ObjState::Pending) {
                        waiting += 1;
                        e.rare().dependents.push(id.task);
                    }
                }
            }
        }
        if let Some(e) = self.objects.get_mut(&id) {
            e.state = ObjState::Pending;
        }
        self.reconstructions += 1;
        let state = if waiting > 0 { TaskState::WaitingDeps(waiting) } else { TaskState::Queued };
        let depth = self.depth;
        self.tasks.insert(
            id.task,
            Box::new(TaskEntry {
                function: lin.function,
                name: lin.name.clone(),
                args: lin.args.clone(),
                class: lin.class,
                actor: None,
                create: None,
                exported: Exports::default(),
                depth,
                retries_left: lin.retries_left,
                retry_exceptions: false,
                preemptions_left: crate::task::DEFAULT_MAX_PREEMPTIONS,
                preempted: 0,
                attempts: 0,
                state,
                ret: ObjectId { task: id.task, index: 0 },
                returns: lin.returns,
                split: lin.split,
                cancelled: false,
                job: lin.job.clone(),
                stream: lin.stream,
                parent: None,
                noted: events::NOT_NOTED,
            }),
        );
        if state == TaskState::Queued {
            self.classes[lin.class].queue.push_back(id.task);
            self.pump(lin.class, fx);
        }
        Ok(())
    }

    /// A task failed because an argument could not be read (its node died): its lost
    /// arguments are made again and it runs again, if it may. Gives the task back if not.
    pub(super) fn retry_after_lost_args(
        &mut self,
        mut t: Box<TaskEntry>,
        fx: &mut Effects,
    ) -> Result<(), Box<TaskEntry>> {
        if t.retries_left == 0 || t.actor.is_some() {
            return Err(t);
        }
        let mut remade = Vec::new();
        for a in &t.args {
            if let ArgDraft::Ref(arg) = a {
                let stored =
                    matches!(self.objects.get(arg).map(|e| &e.state), Some(ObjState::Ready(Ready::Stored { .. })));
                if stored && arg.owner() == self.me && self.reconstruct(*arg, fx).is_ok() {
                    remade.push(*arg);
                }
            }
        }
        if remade.is_empty() {
            return Err(t);
        }
        // The task again, waiting for them (its arguments are still held: it never ended).
        t.retries_left -= 1;
        t.attempts += 1;
        self.retries += 1;
        t.state = TaskState::WaitingDeps(remade.len() as u32);
        for arg in &remade {
            if let Some(e) = self.objects.get_mut(arg) {
                e.rare().dependents.push(t.ret.task);
            }
        }
        self.tasks.insert(t.ret.task, t);
        Ok(())
    }
}
