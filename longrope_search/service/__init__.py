"""The service: a job API and dashboard (``app``) over a job queue (``jobs``) run on Ray."""
