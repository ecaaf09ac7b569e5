"""Nomad's faces of orch: job files (HCL, job JSON) translated into orch jobs.

The core never sees Nomad names: ``hcl.parse_hcl`` turns an HCL job file into
Nomad's API ``Job`` object, ``translate.job_from_nomad`` turns that object into
an orch job body, which ``orch.jobspec.parse_job`` then validates as any other.
"""
