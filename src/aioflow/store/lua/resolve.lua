-- Resolve a waiting vertex (issue 21, helper W): see engine/steering.py.
return 0
