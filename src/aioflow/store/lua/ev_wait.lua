-- Record a waiter for an event (issue 21, helper E): see engine/events.py.
return 0
