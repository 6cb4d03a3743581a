"""Ray's side of `ferry-bench observability`'s history figures: N no-op tasks (default
100,000: Ray keeps at most 100,000 task events per job), then ACTORS actors (default 1,000:
each Ray actor is a Python process of ~50 MiB, so they are made in waves of 100, each created,
called once and released but the last, which stays alive), then `ray list tasks`,
`ray summary tasks`, `ray list actors` (the CLI, start to exit) and the dashboard's state API
timed, median of 7. Same figure names as ferry's, prefixed `ray_`.

    RAY_USAGE_STATS_ENABLED=0 ../anchors-venv/bin/python crates/bench/ray/state_bench.py
"""
import os, statistics, subprocess, sys, time, urllib.request
import ray

N = int(os.environ.get("N", "100000"))
ray.init(num_cpus=2, include_dashboard=True)
ctx = ray.get_runtime_context()
dash = "http://" + ray.worker.get_dashboard_url() if hasattr(ray.worker, "get_dashboard_url") else "http://127.0.0.1:8265"

@ray.remote
def noop():
    pass

t = time.time()
left = N
while left > 0:
    k = min(left, 10000)
    ray.get([noop.remote() for _ in range(k)])
    left -= k
print(f"ray_history_tasks_per_s {N / (time.time() - t):.1f} tasks/s", flush=True)

@ray.remote(num_cpus=0)
class Holder:
    def __init__(self):
        self.n = 0

    def poke(self):
        self.n += 1
        return self.n

ACTORS = int(os.environ.get("ACTORS", "1000"))
t = time.time()
left, kept = ACTORS, []
while left > 0:
    k = min(left, 100)
    wave = [Holder.remote() for _ in range(k)]
    ray.get([a.poke.remote() for a in wave])
    left -= k
    if left == 0:
        kept = wave
    else:
        for a in wave:
            ray.kill(a)
        del wave
print(f"ray_history_actors_per_s {ACTORS / (time.time() - t):.1f} actors/s", flush=True)
time.sleep(5)  # task events reach the GCS once a second

def timed(f, n=7):
    v = []
    for _ in range(n):
        s = time.time()
        f()
        v.append((time.time() - s) * 1e3)
    return statistics.median(v)

ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
env = dict(os.environ, RAY_ADDRESS="auto")
def cli(*args):
    subprocess.run([ray_cli, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

print(f"ray_history_cli_list_tasks_ms {timed(lambda: cli('list', 'tasks', '--limit', '50')):.1f} ms", flush=True)
print(f"ray_history_cli_summary_tasks_ms {timed(lambda: cli('summary', 'tasks')):.1f} ms", flush=True)
print(f"ray_history_cli_list_actors_ms {timed(lambda: cli('list', 'actors', '--limit', '50')):.1f} ms", flush=True)

# Ray 2.60's dashboard takes its cluster's token (kept in ~/.ray/auth_token) as a bearer token.
token_file = os.path.expanduser("~/.ray/auth_token")
headers = {}
if os.path.exists(token_file):
    headers["authorization"] = "Bearer " + open(token_file).read().strip()

def get(path):
    with urllib.request.urlopen(urllib.request.Request(dash + path, headers=headers), timeout=120) as r:
        r.read()

for name, path in [
    ("index", "/"),
    ("cluster", "/api/cluster_status"),
    ("jobs", "/api/jobs/"),
    ("tasks", "/api/v0/tasks?limit=50"),
    ("tasks_filtered", "/api/v0/tasks?limit=50&filter_keys=state&filter_predicates=%3D&filter_values=FINISHED"),
    ("summary", "/api/v0/tasks/summarize"),
    ("actors", "/api/v0/actors?limit=50"),
    ("actors_dead", "/api/v0/actors?limit=50&filter_keys=state&filter_predicates=%3D&filter_values=DEAD"),
]:
    try:
        print(f"ray_history_api_{name}_ms {timed(lambda: get(path)):.1f} ms", flush=True)
    except Exception as e:
        print(f"# ray_history_api_{name}: {e}", flush=True)
ray.shutdown()
