"""The service: a job API and dashboard (``app``) over a job queue (``jobs``), whose jobs run
in the server's process, or on a pool of Ray workers with ``serve --ray`` (``runners``)."""
