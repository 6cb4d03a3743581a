//! Namespaces, as Ray's test_namespace tests them: jobs of one cluster (separate driver
//! processes joining a `ferry start` head) see each other's named actors only within a
//! namespace; a name is unique within its namespace, not across them; a job that sets none has
//! an anonymous one of its own; `get_actor_in` reaches into another; tasks look in their job's.

use ferry::prelude::*;
use ferry_testkit::Head;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[ferry::actor]
struct Svc {
    tag: String,
}

#[ferry::actor]
impl Svc {
    fn new(tag: String) -> Self {
        Svc { tag }
    }
    fn tag(&self) -> String {
        self.tag.clone()
    }
}

/// Looks the name up from inside a task: in the task's job's namespace.
#[ferry::remote]
fn find_from_task(name: String) -> String {
    describe(ferry::get_actor::<Svc>(&name))
}

fn describe(found: ferry::Result<ActorHandle<Svc>>) -> String {
    match found {
        Ok(h) => format!("found {}", ferry::get_timeout(&h.tag(), T).unwrap()),
        Err(ferry::Error::ActorNotFound { .. }) => "not found".into(),
        Err(e) => format!("error {e}"),
    }
}

/// With `FERRY_TEST_NS_JOB` set, this binary is a job of the cluster at `FERRY_ADDRESS` (in
/// `FERRY_NAMESPACE`, if set) that does what the variable says and prints the outcome.
#[used]
#[link_section = ".init_array"]
static JOB: extern "C" fn() = job;

extern "C" fn job() {
    let Ok(what) = std::env::var("FERRY_TEST_NS_JOB") else { return };
    if std::env::var_os("FERRY_WORKER").is_some() {
        return;
    }
    ferry::init(ferry::Config::default()).unwrap();
    let out = match what.split_once(':') {
        Some(("create", tag)) => match Svc::options().name("svc").detached().remote(tag.to_string()) {
            Ok(h) => format!("created {}", ferry::get_timeout(&h.tag(), T).unwrap()),
            Err(e) => format!("error {e}"),
        },
        Some(("find_in", ns)) => describe(ferry::get_actor_in::<Svc>("svc", ns)),
        _ if what == "find" => describe(ferry::get_actor::<Svc>("svc")),
        _ if what == "task_find" => ferry::get_timeout(&find_from_task::remote("svc".to_string()), T).unwrap(),
        _ if what == "namespace" => ferry::runtime_context().unwrap().namespace,
        _ => format!("unknown job {what}"),
    };
    println!("{out}");
    ferry::shutdown();
    std::process::exit(0);
}

/// Runs this binary as a job doing `what`, in `namespace` (none: anonymous); what it printed.
fn run_job(head: &Head, what: &str, namespace: Option<&str>) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("FERRY_TEST_NS_JOB", what)
        .env("FERRY_ADDRESS", &head.address)
        .env("FERRY_TOKEN", &head.token)
        .env_remove("FERRY_NAMESPACE");
    if let Some(ns) = namespace {
        cmd.env("FERRY_NAMESPACE", ns);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "job {what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().to_string()
}

#[test]
fn named_actors_are_found_within_their_namespace_only() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["start", "--head", "--port", "0", "--num-cpus", "2", "--block"]);
    let mut head = Head::start(cmd, T).unwrap();

    assert_eq!(run_job(&head, "create:team's", Some("team")), "created team's");
    // Another job of the namespace finds it, from the driver and from a task.
    assert_eq!(run_job(&head, "find", Some("team")), "found team's");
    assert_eq!(run_job(&head, "task_find", Some("team")), "found team's");
    assert_eq!(run_job(&head, "namespace", Some("team")), "team");
    // Another namespace neither sees it nor collides with it.
    assert_eq!(run_job(&head, "find", Some("other")), "not found");
    assert_eq!(run_job(&head, "create:other's", Some("other")), "created other's");
    assert_eq!(run_job(&head, "find", Some("other")), "found other's");
    assert!(run_job(&head, "create:again", Some("team")).contains("already exists"), "unique within one");
    // A job without a namespace has an anonymous one of its own: it sees neither, unless it
    // asks for a namespace by name.
    assert_eq!(run_job(&head, "find", None), "not found");
    assert_eq!(run_job(&head, "find_in:team", None), "found team's");
    assert_eq!(run_job(&head, "create:mine", None), "created mine");
    assert_eq!(run_job(&head, "find", None), "not found", "each anonymous job has its own");
    assert!(run_job(&head, "namespace", None).starts_with("anonymous-"));

    let stop = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["stop", "--address", &head.address])
        .env("FERRY_TOKEN", &head.token)
        .output()
        .unwrap();
    assert!(stop.status.success(), "{}", String::from_utf8_lossy(&stop.stderr));
    assert!(head.wait_exit(T).unwrap());
}
