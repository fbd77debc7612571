"""Kill one of Troupe's processes in the running cluster, to watch a task survive it.

    python examples/kill.py conductor     # the Conductor replica(s); Serve starts new ones
    python examples/kill.py supervisor    # the Supervisor; Ray restarts it and it recovers
"""

import sys

import ray
from ray.util import list_named_actors

target = sys.argv[1] if len(sys.argv) > 1 else "conductor"
prefix = {"conductor": "SERVE_REPLICA::troupe#Conductor", "supervisor": "troupe-supervisor"}[target]
ray.init(address="auto", log_to_driver=False)
for actor in list_named_actors(all_namespaces=True):
    if actor["name"].startswith(prefix):
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=target == "conductor")
        print(f"killed {actor['name']}")
