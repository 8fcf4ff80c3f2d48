"""The service layer: the only part of rayrt that imports Ray (and HTTP).

Modules, each importing only those listed before it (no cycles):

* ``policies`` (treatment-machine states, target-selection policies, pool settings: pure),
  ``settings`` (where things live), ``models`` (HTTP bodies, store manifests, heartbeats),
  ``process`` (CPU niceness, ports, the Ray environment, named-actor options), ``store``
  (durable store on pyarrow.fs), ``intake`` (uploads -> stored patient), ``structures``
  (delineation on a stored patient), ``web`` (the /ui page);
* ``machine_queues`` (one actor per treatment machine: status, bookings, re-routing),
  ``conversion`` (one conversion actor pool per target machine), ``controlled``
  (ControlledComputer actors: the RayExecutor and the JobRunner that run a job's recipe),
  ``scheduler`` (the priority queue actor), ``app`` (Ray Serve ingress), ``runtime``
  (start/stop Ray + Serve).

``policies``, ``settings``, ``models``, ``process``, ``store``, ``intake`` and ``structures``
import neither Ray nor FastAPI, so tools and tests can use them alone.
"""
