"""Redis as aioflow uses it: connections (lean and redis-py), endpoints, topology
and routing (one Redis or a Cluster), the key schema, the Lua scripts every
transition goes through, outage handling, and the embedded ``redis-server`` and
``LocalCluster``."""
