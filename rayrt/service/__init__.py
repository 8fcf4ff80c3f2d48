"""The service layer: the only part of rayrt that imports Ray (and HTTP).

Modules: ``settings`` (where things live), ``store`` (durable store on pyarrow.fs), ``intake``
(uploads -> stored patient), ``scheduler`` (priority queue actor), ``controlled``
(ControlledComputer actors that run pipeline stages), ``app`` (Ray Serve ingress),
``runtime`` (start/stop Ray + Serve); ``machines``, ``conversion`` and ``policies`` hold the
treatment-machine queues and conversion pools. ``settings``, ``store``, ``models`` and ``intake`` import
neither Ray nor FastAPI, so tools and tests can use them alone.
"""
