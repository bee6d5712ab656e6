"""What a flow is, before any Redis: ``Dag``/``Flow`` and their validation, the
compiled plan, retry and schedule policies, priorities, run statuses, versions
and the ``App`` that lists a deployment's flows."""
