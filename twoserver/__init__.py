"""The two-server plumbing shared by SecEmb and Secure FedRec.

``party``: what each server computes on DPF keys; ``operations``: server 1's
operations on request frames; ``transport``: the in-process and TCP links;
``link``: server 0's side of the link; ``guard``: server 1's meta checks and
per-(run, round) state; ``certs``: the deployment's CA and TLS certificates
(``python -m twoserver.certs``); ``__main__``: server 1 as a process.
"""
