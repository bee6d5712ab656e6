"""Apps loaded by the subprocess tests (``aioflow serve|worker tests.apps.<module>:app``)."""
