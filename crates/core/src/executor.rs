//! The worker side: accept owners' connections, queue the tasks they push, run them one at
//! a time on the worker's main thread, and reply on the connection each came from.
//!
//! Threads: `ferry-accept` accepts owners; one `ferry-owner-rx` per owner reads its pushes
//! into the queue; the main thread runs tasks.
//!
//! Blocking: when the running task waits in `get` ([`Executor::enter_blocked`]), the worker
//! sends every task it has not started back to its owner (`Requeued`) and tells the daemon
//! its CPU is free; while blocked, new pushes go straight back too. Without this a task
//! queued behind a blocked one could be the very task it waits for.

use crate::bytes::ArgData;
use crate::codec;
use crate::registry;
use crate::registry::ActorInstance;
use crate::runtime::{try_runtime, Runtime};
use ferry_proto::conn::Conn;
use ferry_proto::msg::{
    ActorId, ActorSpec, Arg, FromWorker, Return, StreamSpec, TaskError, TaskSpec, ToNode, ToWorker,
};
use ferry_proto::state::TaskState as SeenState;
use ferry_proto::{ObjectId, Shape, TaskId, WorkerId};
use ferry_types::sync::{CondvarExt, MutexExt};
use serde::Serialize;
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;

thread_local! {
    /// The task running on this thread, if any: its return object is named after it.
    static CURRENT: Cell<Option<Running>> = const { Cell::new(None) };
}

/// The task this thread runs now: its id (stored returns are named after it) and how many
/// objects it returns.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Running {
    pub task: TaskId,
    /// `num_returns`, when its caller asked for its value split into that many objects.
    split: Option<u32>,
    /// Its job, and the runs of it before this one.
    pub job: WorkerId,
    pub attempt: u32,
    /// A streaming task: how far ahead of its consumer it may run.
    stream: Option<StreamSpec>,
}

impl Running {
    fn of(spec: &TaskSpec) -> Running {
        Running { task: spec.task, split: spec.num_returns, job: spec.job, attempt: spec.attempt, stream: spec.stream }
    }
}

/// The method id of a handle's `terminate()` call (no type registers it).
pub const TERMINATE: &str = "ferry::__terminate__";

/// The task this thread runs now, if any.
pub(crate) fn running() -> Option<Running> {
    CURRENT.with(|c| c.get())
}

thread_local! {
    /// What the task this thread runs holds, when not the default one CPU.
    static RESOURCES: std::cell::RefCell<Option<Shape>> = const { std::cell::RefCell::new(None) };
    /// The named namespace of the task this thread runs, if its job set one.
    static NAMESPACE: std::cell::RefCell<Option<Arc<str>>> = const { std::cell::RefCell::new(None) };
    /// The connection the running task came on (a streaming task sends its values there).
    static CONN: std::cell::RefCell<Option<Arc<Conn>>> = const { std::cell::RefCell::new(None) };
}

/// The named namespace of the running task's job (`None`: anonymous, or no task).
pub(crate) fn running_namespace() -> Option<Arc<str>> {
    NAMESPACE.with(|n| n.borrow().clone())
}

/// What the task this thread runs holds (`None`: not in a task).
pub(crate) fn running_resources() -> Option<Shape> {
    running()?;
    Some(RESOURCES.with(|r| r.borrow().clone()).unwrap_or_else(|| Shape::cpus(1.0)))
}

/// The actor this worker hosts (from the moment its constructor starts).
#[derive(Debug, Clone)]
pub(crate) struct Hosting {
    pub id: ActorId,
    pub job: WorkerId,
    pub namespace: Option<Arc<str>>,
    /// Its type's registered id.
    pub class: String,
    /// 1 for its first process, one more for each restart.
    pub incarnation: u32,
    pub resources: Shape,
}

/// A task's return value as its worker replies with it (made by [`store_return`]): the
/// value, inline or stored, and what it holds.
#[doc(hidden)]
#[derive(Debug)]
pub struct Returned {
    /// The objects it returns, by index (one unless the task has `num_returns`).
    values: Vec<Return>,
    /// Refs inside the value (the caller keeps them alive while the value lives).
    contained: Vec<ObjectId>,
    /// Of those, the caller's own: this worker holds them once more (see `send_reply`).
    retained: Vec<ObjectId>,
    /// Actors whose handles are inside the value, with their labels (already held for the
    /// caller at the daemon).
    actors: Vec<(ActorId, String)>,
}

impl Returned {
    /// The reply for `task`, and the caller's objects this worker holds once more.
    fn into_reply(self, task: TaskId) -> (FromWorker, Vec<ObjectId>) {
        let done =
            FromWorker::Done { task, returns: self.values, contained: self.contained, actors: self.actors, ran: None };
        (done, self.retained)
    }
}

/// Sends a task's reply to its caller: first what the end of the task requires to be
/// registered (`Runtime::register_at_task_end`; `Retained` tells the caller which of its own
/// objects this worker still holds, the return value's `retained` among them), then the reply.
fn send_reply(rt: &'static Runtime, conn: &Conn, caller: WorkerId, (reply, mut retained): (FromWorker, Vec<ObjectId>)) {
    ferry_proto::fail::crash_point("worker-before-reply");
    retained.extend(rt.register_at_task_end(caller));
    if !retained.is_empty() {
        let _ = conn.send(&FromWorker::Retained { objects: retained });
    }
    let _ = conn.send(&reply);
}

struct Queue {
    tasks: VecDeque<(Arc<Conn>, TaskSpec)>,
    /// Nesting of `enter_blocked` on the task thread.
    blocked: u32,
    /// The daemon asked this worker to host an actor; the main thread constructs it.
    to_host: Option<(ActorId, ActorSpec, u32)>,
}

/// The actor this worker hosts, once constructed.
struct Hosted {
    id: ActorId,
    instance: ActorInstance,
}

/// Runs one call's future with `CURRENT` set to its task during each poll (stored returns
/// are named after it), so calls can interleave on one thread.
struct InTask {
    task: Running,
    inner: std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
}

impl std::future::Future for InTask {
    type Output = ();
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let running = self.task;
        CURRENT.with(|c| c.set(Some(running)));
        let r = self.inner.as_mut().poll(cx);
        CURRENT.with(|c| c.set(None));
        r
    }
}

/// See the module docs.
pub(crate) struct Executor {
    q: Mutex<Queue>,
    cv: Condvar,
    actor: OnceLock<Hosted>,
    hosting: OnceLock<Hosting>,
    /// The task the main thread runs now, and the one its owner cancelled (`is_cancelled`).
    running_task: Mutex<Option<TaskId>>,
    cancelled: Mutex<Option<TaskId>>,
    main_thread: OnceLock<thread::Thread>,
    /// Set when the hosted actor is to end on purpose after the call that asked
    /// (`exit_actor`, or a `terminate` call): why.
    exiting: Mutex<Option<String>>,
    /// The event loop's thread, for async actors (woken with `unpark` instead of `cv`).
    loop_thread: OnceLock<thread::Thread>,
    /// Streaming tasks running here: how many values their consumers took (see
    /// [`StreamOut`]), woken on each `StreamTaken`.
    streams: Mutex<std::collections::HashMap<TaskId, Taken>>,
    stream_cv: Condvar,
    /// An async actor's calls running now, each dropped by its handle when cancelled.
    aborts: Mutex<std::collections::HashMap<TaskId, futures_util::future::AbortHandle>>,
}

/// What a streaming task's consumer took so far.
struct Taken {
    taken: u32,
    /// The connection to its owner (`gone` once it closed: nobody takes values any more).
    conn: Arc<Conn>,
    gone: bool,
}

impl Executor {
    pub fn new() -> Arc<Executor> {
        Arc::new(Executor {
            q: Mutex::new(Queue { tasks: VecDeque::new(), blocked: 0, to_host: None }),
            cv: Condvar::new(),
            actor: OnceLock::new(),
            hosting: OnceLock::new(),
            exiting: Mutex::new(None),
            running_task: Mutex::new(None),
            cancelled: Mutex::new(None),
            main_thread: OnceLock::new(),
            loop_thread: OnceLock::new(),
            streams: Mutex::new(Default::default()),
            stream_cv: Condvar::new(),
            aborts: Mutex::new(Default::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.locked()
    }

    /// The actor this worker hosts, once asked to.
    pub(crate) fn hosting(&self) -> Option<&Hosting> {
        self.hosting.get()
    }

    /// The hosted actor ends after the call running now (`exit_actor`, `terminate`).
    pub(crate) fn exit_after_call(&self, why: &str) -> bool {
        if self.actor.get().is_none() {
            return false;
        }
        self.exiting.locked().get_or_insert_with(|| why.to_string());
        true
    }

    /// If the hosted actor is to end: its `on_exit` runs, its daemon is told (its holders
    /// learn why, and it is not restarted), and this process ends.
    fn exit_if_asked(&self, rt: &'static Runtime) {
        let Some(reason) = self.exiting.locked().clone() else { return };
        let Some(hosted) = self.actor.get() else { return };
        let class = self.hosting.get().and_then(|h| registry::lookup_class(&h.class));
        if let Some(on_exit) = class.and_then(|c| c.on_exit) {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_exit(&hosted.instance))).is_err() {
                tracing::error!("the actor's on_exit panicked");
            }
        }
        rt.send_node(&ToNode::ActorExited { actor: hosted.id, reason });
        // Its replies and the message above are on their way; what is queued never runs.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::process::exit(0);
    }

    /// A message from an owner on connection `conn` (read by the runtime's inbound thread).
    pub fn on_message(&self, conn: &Arc<Conn>, msg: ToWorker) {
        match msg {
            ToWorker::Push(specs) => {
                let mut q = self.lock();
                // An actor's calls can run nowhere else: they wait here even while blocked.
                if q.blocked > 0 && self.actor.get().is_none() {
                    drop(q);
                    let tasks = specs.iter().map(|s| s.task).collect();
                    let _ = conn.send(&FromWorker::Requeued { tasks });
                } else {
                    let n = specs.len();
                    q.tasks.extend(specs.into_iter().map(|s| (conn.clone(), s)));
                    drop(q);
                    match self.loop_thread.get() {
                        Some(t) => t.unpark(),
                        // One thread per new call: with max_concurrency > 1, a batch of
                        // calls arriving in one frame must not wait for a single thread.
                        None if n > 1 => self.cv.notify_all(),
                        None => self.cv.notify_one(),
                    }
                }
            }
            ToWorker::Cancel { task, force, recursive } => {
                let mut q = self.lock();
                if let Some(pos) = q.tasks.iter().position(|(_, s)| s.task == task) {
                    q.tasks.remove(pos);
                    drop(q);
                    let _ = conn.send(&FromWorker::Failed { task, error: TaskError::Cancelled });
                    return;
                }
                // A running call of an async actor: dropped where it awaits.
                if let Some(abort) = self.aborts.locked().remove(&task) {
                    drop(q);
                    abort.abort();
                    if let Some(t) = self.loop_thread.get() {
                        t.unpark();
                    }
                    return;
                }
                if *self.running_task.locked() != Some(task) {
                    return; // Finished: final at its owner already.
                }
                if recursive {
                    // What it submitted is this process's to cancel (it owns it), before
                    // this process may end below.
                    if let Some(rt) = try_runtime() {
                        rt.with_state(|st, fx| st.cancel_children(task, force, fx));
                    }
                }
                // An actor's calls cannot be forced (its state would go): they are told.
                if force && self.actor.get().is_none() {
                    // The tasks not started go back to their owners, then this process ends.
                    let queued: Vec<(Arc<Conn>, TaskSpec)> = q.tasks.drain(..).collect();
                    drop(q);
                    hand_back(queued);
                    let _ = conn.send(&FromWorker::Failed { task, error: TaskError::Cancelled });
                    thread::sleep(std::time::Duration::from_millis(20));
                    std::process::exit(1);
                }
                drop(q);
                *self.cancelled.locked() = Some(task);
                for t in [self.main_thread.get(), self.loop_thread.get()].into_iter().flatten() {
                    t.unpark();
                }
                self.stream_cv.notify_all();
            }
            ToWorker::StreamTaken { task, taken } => {
                if let Some(s) = self.streams.locked().get_mut(&task) {
                    s.taken = s.taken.max(taken);
                    self.stream_cv.notify_all();
                }
            }
            ToWorker::Steal { max } => {
                // The newest of this owner's unstarted tasks (the oldest run soonest here).
                let mut q = self.lock();
                let mut tasks = Vec::new();
                let mut i = q.tasks.len();
                while i > 0 && tasks.len() < max as usize {
                    i -= 1;
                    if Arc::ptr_eq(&q.tasks[i].0, conn) {
                        tasks.push(q.tasks.remove(i).expect("index in range").1.task);
                    }
                }
                drop(q);
                tasks.reverse();
                let _ = conn.send(&FromWorker::Stolen { tasks });
            }
            // Requests about objects are the runtime's.
            _ => {}
        }
    }

    /// The owner behind `conn` is gone: nobody wants the results of its queued tasks.
    pub fn owner_gone(&self, conn: &Arc<Conn>) {
        self.lock().tasks.retain(|(c, _)| !Arc::ptr_eq(c, conn));
        let mut streams = self.streams.locked();
        for s in streams.values_mut().filter(|s| Arc::ptr_eq(&s.conn, conn)) {
            s.gone = true;
        }
        self.stream_cv.notify_all();
    }

    /// Waits until streaming task `task` may make value `index`: its consumer took enough
    /// (lending this worker's CPU meanwhile). An error if it was cancelled, or its owner is
    /// gone.
    fn wait_stream_room(&self, rt: &Runtime, task: TaskId, index: u32, window: u32) -> Result<(), TaskError> {
        let mut lent = None;
        let mut s = self.streams.locked();
        loop {
            let Some(t) = s.get(&task) else { return Ok(()) };
            if t.gone || self.is_cancelled(task) {
                return Err(TaskError::Cancelled);
            }
            if index < t.taken.saturating_add(window) {
                return Ok(());
            }
            if lent.is_none() {
                drop(s);
                lent = Some(rt.lend_cpu());
                s = self.streams.locked();
                continue;
            }
            // Woken by a take, a cancel or the owner's loss; the timeout is a backstop.
            s = self.stream_cv.wait_timeout_locked(s, std::time::Duration::from_millis(200));
        }
    }

    /// The daemon asks this worker to host an actor (called on the node reader thread).
    pub fn become_actor(&self, actor: ActorId, spec: ActorSpec, incarnation: u32) {
        self.lock().to_host = Some((actor, spec, incarnation));
        self.cv.notify_all();
    }

    /// Runs tasks forever on the calling thread.
    pub fn run(self: &Arc<Self>, rt: &'static Runtime) -> ! {
        let _ = self.main_thread.set(thread::current());
        loop {
            let job = {
                let mut q = self.lock();
                loop {
                    if let Some(host) = q.to_host.take() {
                        break Err(host);
                    }
                    if let Some(t) = q.tasks.pop_front() {
                        break Ok(t);
                    }
                    q = self.cv.wait_locked(q);
                }
            };
            match job {
                Ok((conn, spec)) => self.run_one(rt, &conn, &spec),
                Err((actor, spec, incarnation)) => self.construct(rt, actor, spec, incarnation),
            }
        }
    }

    /// Whether the task the calling thread runs was cancelled.
    pub(crate) fn is_cancelled(&self, task: TaskId) -> bool {
        *self.cancelled.locked() == Some(task)
    }

    fn run_one(&self, rt: &'static Runtime, conn: &Arc<Conn>, spec: &TaskSpec) {
        *self.running_task.locked() = Some(spec.task);
        let hosted = self.actor.get();
        {
            let mut st = rt.lock();
            st.set_depth(spec.depth + 1);
            // An actor's calls may run several at once: only a task is a parent for sure.
            st.set_running(hosted.is_none().then_some(spec.task));
        }
        if self.actor.get().is_none() {
            crate::logs::set_label(spec.function.rsplit("::").next().unwrap_or(&spec.function));
        }
        CURRENT.with(|c| c.set(Some(Running::of(spec))));
        if spec.resources.is_some() {
            RESOURCES.with(|r| *r.borrow_mut() = spec.resources.clone());
        }
        if let Some(n) = &spec.namespace {
            NAMESPACE.with(|x| *x.borrow_mut() = Some(Arc::from(n.as_str())));
        }
        if spec.stream.is_some() {
            CONN.with(|c| *c.borrow_mut() = Some(conn.clone()));
        }
        let started = spec.timed.then(|| rt.started(spec.task, spec.attempt));
        let _span = hosted.map(|h| tracing::debug_span!("actor", actor = ?h.id).entered());
        let mut reply = execute(rt, spec, hosted.map(|h| &h.instance));
        if let (Some(start), FromWorker::Done { ran, .. }) = (started, &mut reply.0) {
            *ran = Some((start, rt.ended()));
        }
        // What the task submitted is recorded before it is said to be done: its job may end
        // (and this worker with it) as soon as its owner hears.
        rt.flush_task_events_if_noted();
        CURRENT.with(|c| c.set(None));
        // (`set_running` stays until the next task: a worker submits nothing between tasks.)
        *self.running_task.locked() = None;
        let mut cancelled = self.cancelled.locked();
        if *cancelled == Some(spec.task) {
            *cancelled = None;
        }
        drop(cancelled);
        if spec.resources.is_some() {
            RESOURCES.with(|r| *r.borrow_mut() = None);
        }
        if spec.namespace.is_some() {
            NAMESPACE.with(|x| *x.borrow_mut() = None);
        }
        if spec.stream.is_some() {
            CONN.with(|c| *c.borrow_mut() = None);
        }
        send_reply(rt, conn, spec.task.owner, reply);
        if hosted.is_some() {
            self.exit_if_asked(rt);
        }
    }

    /// Runs the actor's constructor; on success this worker serves its calls from now on,
    /// on `max_concurrency` threads.
    fn construct(self: &Arc<Self>, rt: &'static Runtime, actor: ActorId, spec: ActorSpec, incarnation: u32) {
        let namespace = spec.namespace.as_deref().map(Arc::from);
        let _ = self.hosting.set(Hosting {
            id: actor,
            job: spec.job,
            namespace,
            class: spec.class.clone(),
            incarnation,
            resources: spec.shape.clone(),
        });
        let _span = tracing::debug_span!("actor", ?actor, class = %spec.class).entered();
        crate::logs::set_label(spec.class.rsplit("::").next().unwrap_or(&spec.class));
        let mut is_async = false;
        let result = (|| {
            let class = registry::lookup_class(&spec.class)
                .ok_or_else(|| format!("this binary has no actor type {:?}", spec.class))?;
            let held = load_args(rt, &spec.class, &spec.args).map_err(|e| format!("{e:?}"))?;
            let args = arg_data(&spec.args, &held);
            rt.lock().set_depth(spec.depth + 1);
            is_async = class.is_async;
            let instance = (class.construct)(&args).map_err(|e| match e {
                TaskError::Panicked { message, .. } => format!("the constructor panicked: {message}"),
                e => format!("{e:?}"),
            })?;
            Ok::<_, String>(instance)
        })();
        match result {
            Ok(instance) => {
                ferry_proto::fail::crash_point("actor-before-ready");
                let _ = self.actor.set(Hosted { id: actor, instance });
                if is_async {
                    let _ = self.loop_thread.set(thread::current());
                    rt.send_node(&ToNode::ActorReady { actor, error: None });
                    self.run_event_loop(rt, spec.max_concurrency.max(1) as usize);
                }
                for i in 1..spec.max_concurrency.max(1) {
                    let me = self.clone();
                    let spawned = thread::Builder::new().name(format!("ferry-actor-{i}")).spawn(move || me.run(rt));
                    if let Err(e) = spawned {
                        tracing::error!("cannot start actor thread: {e}");
                    }
                }
                rt.send_node(&ToNode::ActorReady { actor, error: None });
            }
            Err(e) => {
                rt.send_node(&ToNode::ActorReady { actor, error: Some(e) });
            }
        }
    }

    /// The event loop of an async actor: calls run as futures on this one thread, up to
    /// `limit` at once, interleaving where they `.await`; sync methods run inline.
    fn run_event_loop(&self, rt: &'static Runtime, limit: usize) -> ! {
        use std::cell::Cell;
        use std::rc::Rc;
        let mut pool = futures_executor::LocalPool::new();
        let spawner = pool.spawner();
        let active = Rc::new(Cell::new(0usize));
        let hosted = self.actor.get().expect("constructed");
        let instance = hosted.instance.clone();
        let _span = tracing::debug_span!("actor", actor = ?hosted.id).entered();
        loop {
            let jobs: Vec<(Arc<Conn>, TaskSpec)> = {
                let mut q = self.lock();
                let n = limit.saturating_sub(active.get()).min(q.tasks.len());
                q.tasks.drain(..n).collect()
            };
            for (conn, spec) in jobs {
                let task = spec.task;
                CURRENT.with(|c| c.set(Some(Running::of(&spec))));
                CONN.with(|c| *c.borrow_mut() = spec.stream.map(|_| conn.clone()));
                let started = start_call(rt, &instance, &spec);
                CONN.with(|c| *c.borrow_mut() = None);
                CURRENT.with(|c| c.set(None));
                match started {
                    Started::Done(reply) => send_reply(rt, &conn, task.owner, reply),
                    Started::Future(fut) => {
                        active.set(active.get() + 1);
                        let active = active.clone();
                        let (abort, registration) = futures_util::future::AbortHandle::new_pair();
                        self.aborts.locked().insert(task, abort);
                        let fut = futures_util::future::Abortable::new(fut, registration);
                        let me = rt.executor().cloned();
                        let inner = Box::pin(async move {
                            let reply = match fut.await {
                                Ok(Ok(ret)) => ret.into_reply(task),
                                Ok(Err(error)) => (FromWorker::Failed { task, error }, Vec::new()),
                                // Cancelled: dropped where it awaited.
                                Err(_) => (FromWorker::Failed { task, error: TaskError::Cancelled }, Vec::new()),
                            };
                            if let Some(x) = me {
                                x.aborts.locked().remove(&task);
                            }
                            send_reply(rt, &conn, task.owner, reply);
                            active.set(active.get() - 1);
                        });
                        use futures_util::task::LocalSpawnExt;
                        if let Err(e) = spawner.spawn_local(InTask { task: Running::of(&spec), inner }) {
                            tracing::error!("cannot run an async call: {e}");
                        }
                    }
                }
            }
            pool.run_until_stalled();
            // A call that asked the actor to end has replied by now; the others are dropped.
            self.exit_if_asked(rt);
            let more = {
                let q = self.lock();
                !q.tasks.is_empty() && active.get() < limit
            };
            if !more {
                // Woken by a new call (the owner readers unpark us) or a call's waker.
                thread::park();
            }
        }
    }

    /// Called when the task on this thread is about to wait: tells the daemon (on `node`) its
    /// CPU is free, and sends unstarted tasks back to their owners. Returns a guard that takes
    /// the CPU back when dropped; `None` if this thread runs no task.
    pub fn enter_blocked(&self, node: &Arc<Conn>) -> Option<BlockedGuard> {
        let running = CURRENT.with(|c| c.get())?;
        if let Some(rt) = try_runtime() {
            rt.note_running(running.task, running.attempt, SeenState::Blocked);
        }
        let mut q = self.lock();
        q.blocked += 1;
        if q.blocked == 1 && self.actor.get().is_some() {
            // An actor keeps its queued calls (they can run nowhere else); it only lends its
            // CPU while it waits.
            drop(q);
            let _ = node.send(&ToNode::Blocked);
        } else if q.blocked == 1 {
            let queued: Vec<(Arc<Conn>, TaskSpec)> = q.tasks.drain(..).collect();
            drop(q);
            hand_back(queued);
            let _ = node.send(&ToNode::Blocked);
        }
        Some(BlockedGuard { exec: self, node: node.clone(), running })
    }
}

/// Hands unstarted tasks back to their owners, one message per owner (`Requeued`).
fn hand_back(queued: Vec<(Arc<Conn>, TaskSpec)>) {
    let mut by_owner: Vec<(Arc<Conn>, Vec<TaskId>)> = Vec::new();
    for (c, s) in queued {
        match by_owner.iter_mut().find(|(o, _)| Arc::ptr_eq(o, &c)) {
            Some((_, v)) => v.push(s.task),
            None => by_owner.push((c, vec![s.task])),
        }
    }
    for (c, tasks) in by_owner {
        let _ = c.send(&FromWorker::Requeued { tasks });
    }
}

/// Whether the task the calling thread runs was cancelled (false outside a task).
pub fn cancelled_now() -> bool {
    let Some(r) = running() else { return false };
    try_runtime().and_then(|rt| rt.executor().cloned()).is_some_and(|x| x.is_cancelled(r.task))
}

/// Takes the worker's CPU back when the wait ends.
pub(crate) struct BlockedGuard {
    exec: *const Executor,
    node: Arc<Conn>,
    running: Running,
}

impl Drop for BlockedGuard {
    fn drop(&mut self) {
        // SAFETY: the executor lives for the whole process (in the runtime, a static).
        let exec = unsafe { &*self.exec };
        if let Some(rt) = try_runtime() {
            rt.note_running(self.running.task, self.running.attempt, SeenState::Running);
        }
        let mut q = exec.lock();
        q.blocked -= 1;
        if q.blocked == 0 {
            drop(q);
            let _ = self.node.send(&ToNode::Unblocked);
        }
    }
}

enum ArgBytes {
    Inline(usize),
    Mapped(ferry_store::ObjectView),
}

/// Maps the stored arguments (inline ones stay where they are).
fn load_args(rt: &Runtime, function: &str, args: &[Arg]) -> Result<Vec<ArgBytes>, TaskError> {
    let mut held = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a {
            Arg::Inline(_) => held.push(ArgBytes::Inline(i)),
            Arg::Stored { object, node, .. } => match rt.map_from(*object, *node) {
                Ok(v) => held.push(ArgBytes::Mapped(v)),
                Err(e) => {
                    return Err(TaskError::ArgumentUnavailable {
                        function: function.to_string(),
                        detail: e.to_string(),
                    })
                }
            },
        }
    }
    Ok(held)
}

fn arg_data<'a>(args: &'a [Arg], held: &'a [ArgBytes]) -> Vec<ArgData<'a>> {
    held.iter()
        .map(|h| match h {
            ArgBytes::Inline(i) => match &args[*i] {
                Arg::Inline(v) => ArgData { bytes: v.as_slice(), view: None },
                Arg::Stored { .. } => unreachable!("inline index"),
            },
            ArgBytes::Mapped(v) => ArgData { bytes: &v[..], view: Some(v) },
        })
        .collect()
}

/// Runs a task, or with `instance` a call of the hosted actor's method; returns its reply
/// and the caller's objects this worker now holds once more.
fn execute(rt: &Runtime, spec: &TaskSpec, instance: Option<&ActorInstance>) -> (FromWorker, Vec<ObjectId>) {
    let task = spec.task;
    let failed = |error| (FromWorker::Failed { task, error }, Vec::new());
    let unknown = || failed(TaskError::UnknownFunction { function: spec.function.clone() });
    let _span = tracing::debug_span!("task", %task, function = %spec.function).entered();
    if instance.is_some() && spec.function == TERMINATE {
        // A handle's `terminate()`: queued after the calls before it, it ends the actor now.
        if let Some(x) = rt.executor() {
            x.exit_after_call("it was terminated through a handle (terminate(), after the calls before it)");
        }
        return match store_return(&(), &spec.function) {
            Ok(r) => r.into_reply(task),
            Err(error) => failed(error),
        };
    }
    let held = match load_args(rt, &spec.function, &spec.args) {
        Ok(h) => h,
        Err(error) => return failed(error),
    };
    let args = arg_data(&spec.args, &held);
    let result = match instance {
        None => match registry::lookup(&spec.function) {
            Some(f) => (f.invoke)(&args),
            None => return unknown(),
        },
        Some(inst) => match registry::lookup_method(&spec.function) {
            Some(m) => (m.invoke)(inst, &args),
            None => return unknown(),
        },
    };
    match result {
        Ok(ret) => ret.into_reply(task),
        Err(error) => failed(error),
    }
}

enum Started {
    Done((FromWorker, Vec<ObjectId>)),
    Future(registry::MethodFuture),
}

/// Starts a call on an async actor: an async method gives a future, anything else runs now.
fn start_call(rt: &Runtime, instance: &ActorInstance, spec: &TaskSpec) -> Started {
    let task = spec.task;
    let failed = |error| Started::Done((FromWorker::Failed { task, error }, Vec::new()));
    if spec.function == TERMINATE {
        return Started::Done(execute(rt, spec, Some(instance)));
    }
    let Some(m) = registry::lookup_method(&spec.function) else {
        return failed(TaskError::UnknownFunction { function: spec.function.clone() });
    };
    let Some(start) = m.invoke_async else {
        return Started::Done(execute(rt, spec, Some(instance)));
    };
    let held = match load_args(rt, &spec.function, &spec.args) {
        Ok(h) => h,
        Err(error) => return failed(error),
    };
    match start(instance, &arg_data(&spec.args, &held)) {
        Ok(fut) => Started::Future(fut),
        Err(error) => failed(error),
    }
}

/// Encodes a task's return value: inline if small, else into the node's store under the
/// task's return id (used by generated code).
pub fn store_return<R: Serialize + 'static>(r: &R, function: &str) -> Result<Returned, TaskError> {
    let mut out = Returns::new(function, 1)?;
    out.push(r)?;
    out.finish()
}

/// Into how many objects the caller asked the running task's value to be split
/// (`num_returns`), if it did.
pub fn split_returns() -> Option<u32> {
    CURRENT.with(|c| c.get()).and_then(|r| r.split)
}

/// A task's return values as objects `0..n`, stored one by one (used by generated code for
/// `num_returns`; [`store_return`] is the case of one).
#[doc(hidden)]
pub struct Returns<'f> {
    rt: &'static Runtime,
    function: &'f str,
    task: TaskId,
    out: Returned,
}

impl<'f> Returns<'f> {
    /// For `n` values of the running task of `function`. A count other than the one its
    /// caller asked for is an error the caller sees on every ref.
    pub fn new(function: &'f str, n: u32) -> Result<Returns<'f>, TaskError> {
        let bad = |detail: String| TaskError::BadReturn { function: function.to_string(), detail };
        let rt = try_runtime().ok_or_else(|| bad("no runtime in this process".into()))?;
        let running = CURRENT.with(|c| c.get()).ok_or_else(|| bad("not running a task".into()))?;
        let asked = running.split.unwrap_or(1);
        if n != asked {
            return Err(bad(format!(
                "it returned {n} values but its caller asked for num_returns = {asked}: return as many as are asked for"
            )));
        }
        let out = Returned {
            values: Vec::with_capacity(n as usize),
            contained: Vec::new(),
            retained: Vec::new(),
            actors: Vec::new(),
        };
        Ok(Returns { rt, function, task: running.task, out })
    }

    /// The next value.
    pub fn push<R: Serialize + 'static>(&mut self, r: &R) -> Result<(), TaskError> {
        let function = self.function;
        let bad = |detail: String| TaskError::BadReturn { function: function.to_string(), detail };
        let (enc, found) = crate::refs::encoding(self.rt.addrs(), || codec::encode(r));
        let enc = enc.map_err(|e| bad(e.to_string()))?;
        let index = self.out.values.len() as u32;
        self.out.values.push(self.rt.store_return(ObjectId { task: self.task, index }, enc, function)?);
        self.out.contained.extend(found.refs);
        self.out.actors.extend(found.actors);
        Ok(())
    }

    /// What the caller is sent: the values, and the refs and handles inside them, which the
    /// caller is made to hold before this task's own handles go.
    pub fn finish(self) -> Result<Returned, TaskError> {
        let Returns { rt, task, mut out, .. } = self;
        hold_inside(rt, task, &mut out);
        Ok(out)
    }
}

/// Holds what a value made by `task` contains for its caller: refs (see
/// `OwnerState::returning`) and actor handles (at their homes).
fn hold_inside(rt: &'static Runtime, task: TaskId, out: &mut Returned) {
    {
        if !out.contained.is_empty() {
            // See `OwnerState::returning`.
            out.contained.sort_unstable();
            out.contained.dedup();
            let (callers, others) = rt.lock().returning(task.owner, &out.contained);
            rt.register_borrows(others, task.owner);
            out.retained = callers;
        }
        if !out.actors.is_empty() {
            out.actors.sort_unstable_by_key(|(a, _)| *a);
            out.actors.dedup_by_key(|(a, _)| *a);
            out.actors.retain(|(actor, _)| {
                let home = rt.actor_home(*actor);
                let held = rt.call_at(&home, |req| ToNode::HoldActorFor { req, actor: *actor, holder: task.owner });
                matches!(held, Ok(ferry_proto::msg::FromNode::Ack { error: None, .. }))
            });
        }
    }
}

/// A streaming task's values, each sent to its owner as soon as it is made (used by the
/// code `#[ferry::remote(streaming)]` generates): value `i` is object `i` of the task.
#[doc(hidden)]
pub struct StreamOut<'f> {
    rt: &'static Runtime,
    exec: Arc<Executor>,
    function: &'f str,
    task: TaskId,
    spec: StreamSpec,
    conn: Arc<Conn>,
    next: u32,
}

impl<'f> StreamOut<'f> {
    /// For the running task of `function`, whose caller asked for a stream.
    pub fn new(function: &'f str) -> Result<StreamOut<'f>, TaskError> {
        let bad = |detail: &str| TaskError::BadReturn { function: function.to_string(), detail: detail.to_string() };
        let rt = try_runtime().ok_or_else(|| bad("no runtime in this process"))?;
        let exec = rt.executor().cloned().ok_or_else(|| bad("not a worker"))?;
        let running = running().ok_or_else(|| bad("not running a task"))?;
        let spec =
            running.stream.ok_or_else(|| bad("it streams its values, but its caller did not ask for a stream"))?;
        let conn = CONN.with(|c| c.borrow().clone()).ok_or_else(|| bad("no connection to its caller"))?;
        exec.streams.locked().insert(running.task, Taken { taken: spec.taken, conn: conn.clone(), gone: false });
        Ok(StreamOut { rt, exec, function, task: running.task, spec, conn, next: 0 })
    }

    /// Makes the next value: waits for room in the window, stores it, sends it.
    pub fn push<R: Serialize + 'static>(&mut self, r: &R) -> Result<(), TaskError> {
        let (rt, task, function) = (self.rt, self.task, self.function);
        self.exec.wait_stream_room(rt, task, self.next, self.spec.window)?;
        let bad = |detail: String| TaskError::BadReturn { function: function.to_string(), detail };
        let (enc, found) = crate::refs::encoding(rt.addrs(), || codec::encode(r));
        let enc = enc.map_err(|e| bad(e.to_string()))?;
        let index = self.next;
        let value = rt.store_return(ObjectId { task, index }, enc, function)?;
        let mut out =
            Returned { values: Vec::new(), contained: found.refs, retained: Vec::new(), actors: found.actors };
        hold_inside(rt, task, &mut out);
        if !out.retained.is_empty() {
            let _ = self.conn.send(&FromWorker::Retained { objects: out.retained });
        }
        let sent =
            self.conn.send(&FromWorker::Streamed { task, index, value, contained: out.contained, actors: out.actors });
        // Its owner is gone: nobody takes the values.
        sent.map_err(|_| TaskError::Cancelled)?;
        self.next += 1;
        Ok(())
    }

    /// The task's reply: its values went already.
    pub fn finish(self) -> Result<Returned, TaskError> {
        Ok(Returned { values: Vec::new(), contained: Vec::new(), retained: Vec::new(), actors: Vec::new() })
    }
}

impl Drop for StreamOut<'_> {
    fn drop(&mut self) {
        self.exec.streams.locked().remove(&self.task);
    }
}
