"""OpenAPI 3 descriptions of the server's and the agent's routes (/openapi.json).

Over 400 lines on purpose: it is data, one description per route, read
top to bottom beside the routes it documents.
"""

from __future__ import annotations

_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}
_MESSAGE = {"type": "object", "properties": {"message": {"type": "string"}}}
_RESOURCES = {
    "type": "object",
    "properties": {
        "cpu": {"type": "integer", "minimum": 0},
        "memory": {"type": "integer", "minimum": 0},
    },
}
_CONSTRAINT = {
    "type": "object",
    "required": ["attribute", "operator", "value"],
    "properties": {
        "attribute": {"type": "string"},
        "operator": {"type": "string", "enum": ["=", "!=", ">", "<", ">=", "<=", "regex"]},
        "value": {"type": "string"},
    },
}
_TASK = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "driver": {"type": "string", "enum": ["exec", "docker"]},
        "config": {"type": "object"},
        "resources": _RESOURCES,
        "kill_signal": {"type": "string", "description": "default SIGTERM"},
        "kill_timeout": {
            "description": 'seconds before SIGKILL, or a duration such as "5s" (default)',
            "oneOf": [{"type": "string"}, {"type": "number", "minimum": 0}],
        },
    },
}
_META = {"type": "object", "additionalProperties": {"type": "string"}}
_PERIODIC = {
    "type": "object",
    "required": ["crons"],
    "properties": {
        "crons": {"type": "array", "items": {"type": "string"}},
        "time_zone": {"type": "string"},
        "prohibit_overlap": {"type": "boolean"},
        "enabled": {"type": "boolean"},
    },
}
_PARAMETERIZED = {
    "type": "object",
    "properties": {
        "meta_required": {"type": "array", "items": {"type": "string"}},
        "meta_optional": {"type": "array", "items": {"type": "string"}},
        "payload": {"type": "string", "enum": ["optional", "required", "forbidden"]},
    },
}
_DISPATCH = {
    "type": "object",
    "properties": {"meta": _META, "payload": {"type": "string", "format": "byte"}},
}
_REVERT = {
    "type": "object",
    "required": ["version"],
    "properties": {"version": {"type": "integer", "minimum": 0}},
    "additionalProperties": False,
}
_REVERTED = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "evaluation_id": {"type": "string"},
        "version": {"type": "integer"},
        "message": {"type": "string"},
    },
}
_VERSIONS = {
    "type": "object",
    "properties": {
        "versions": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "version": {"type": "integer"},
                    "submit_time": {"type": "number"},
                    "stable": {"type": "boolean"},
                    "job": {"type": "object"},
                    "diff": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
        "count": {"type": "integer"},
    },
}
_DISPATCHED = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string"},
        "dispatched_job_id": {"type": "string"},
        "evaluation_id": {"type": "string"},
        "message": {"type": "string"},
    },
}
# The update block (job and group level, group wins); durations as "10s" or seconds.
_DURATION = {"oneOf": [{"type": "string"}, {"type": "number", "minimum": 0}]}
_UPDATE = {
    "type": "object",
    "properties": {
        "max_parallel": {"type": "integer", "minimum": 0},
        "health_check": {"type": "string", "enum": ["checks", "task_states", "manual"]},
        "min_healthy_time": _DURATION,
        "healthy_deadline": _DURATION,
        "progress_deadline": _DURATION,
        "auto_revert": {"type": "boolean"},
        "canary": {"type": "integer", "minimum": 0},
        "auto_promote": {"type": "boolean"},
    },
}
# The group network block: host ports the scheduler reserves (no static: dynamic).
_PORT_NUMBER = {"type": "integer", "minimum": 1, "maximum": 65535}
_NETWORK = {
    "type": "object",
    "properties": {
        "ports": {
            "type": "array",
            "maxItems": 32,
            "items": {
                "type": "object",
                "required": ["label"],
                "properties": {
                    "label": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]{0,63}$"},
                    "static": _PORT_NUMBER,
                    "to": _PORT_NUMBER,
                },
            },
        }
    },
}
_JOB = {
    "type": "object",
    "required": ["task_groups"],
    "properties": {
        "job_id": {"type": "string"},
        "meta": _META,
        "periodic": _PERIODIC,
        "parameterized": _PARAMETERIZED,
        "type": {"type": "string", "enum": ["batch", "service", "system", "sysbatch"]},
        "constraints": {"type": "array", "items": _CONSTRAINT},
        "update": _UPDATE,
        "task_groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "tasks"],
                "properties": {
                    "name": {"type": "string"},
                    "count": {"type": "integer", "minimum": 1},
                    "tasks": {"type": "array", "minItems": 1, "items": _TASK},
                    "constraints": {"type": "array", "items": _CONSTRAINT},
                    "migrate": {
                        "type": "object",
                        "properties": {"max_parallel": {"type": "integer", "minimum": 1}},
                    },
                    "meta": _META,
                    "update": _UPDATE,
                    "network": _NETWORK,
                    "shutdown_delay": _DURATION,
                    "restart": {
                        "type": "object",
                        "properties": {
                            "attempts": {"type": "integer", "minimum": 0},
                            "interval": _DURATION,
                            "delay": _DURATION,
                            "mode": {"type": "string", "enum": ["fail", "delay"]},
                        },
                    },
                },
            },
        },
    },
}
_ELIGIBILITY = {
    "type": "object",
    "required": ["eligible"],
    "properties": {"eligible": {"type": "boolean"}},
}
_DRAIN = {
    "type": "object",
    "properties": {
        "deadline_s": {
            "description": 'seconds, or a duration such as "1m"; 0 stops everything at once',
            "oneOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
        },
        "ignore_system_jobs": {"type": "boolean"},
        "cancel": {"type": "boolean", "description": "end the drain; the node is eligible"},
    },
}
_NODE_SCHEDULING = {
    "type": "object",
    "required": ["node_id", "eligibility", "message"],
    "properties": {
        "node_id": {"type": "string"},
        "eligibility": {"type": "string", "enum": ["eligible", "ineligible"]},
        "drain": {"type": "object", "nullable": True},
        "message": {"type": "string"},
    },
}
_REGISTER = {
    "type": "object",
    "required": ["node_id", "resources", "endpoint"],
    "properties": {
        "node_id": {"type": "string"},
        "region": {"type": "string"},
        "resources": _RESOURCES,
        "healthy": {"type": "boolean"},
        "endpoint": {"type": "string"},
        "attributes": {"type": "object"},
        "meta": {"type": "object"},
        "secret_id": {"type": "string"},
        "port_range": {
            "type": "string",
            "description": 'host ports for dynamic task ports, "LOW-HIGH" (default 20000-32000)',
        },
    },
}
_HEARTBEAT = {
    "type": "object",
    "required": ["node_id"],
    "properties": {
        "node_id": {"type": "string"},
        "resources": {"type": "object"},
        "healthy": {"type": "boolean"},
        "timestamp": {"type": "number"},
        "allocations": {"type": "object"},
        "secret_id": {"type": "string"},
    },
}


_PLAN = {
    "type": "object",
    "required": ["job_id", "diff", "failures", "version"],
    "properties": {
        "job_id": {"type": "string"},
        "exists": {"type": "boolean"},
        "changed": {"type": "boolean"},
        "version": {"type": "integer"},
        "current_version": {"type": "integer", "nullable": True},
        "diff": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "place": {"type": "integer"},
                    "stop": {"type": "integer"},
                    "keep": {"type": "integer"},
                    "replace": {"type": "integer"},
                    "scale": {"type": "string"},
                },
            },
        },
        "failures": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "wanted": {"type": "integer"},
                    "failures": {"type": "object"},
                    "nodes": {"type": "array", "items": {"type": "object"}},
                },
            },
        },
    },
}


_LOG_QUERY = (
    ("type", {"type": "string", "enum": ["stdout", "stderr"]}),
    ("offset", {"type": "integer", "minimum": 0}),
)


_SERVICES = {
    "type": "object",
    "required": ["services", "count"],
    "properties": {"services": {"type": "array"}, "count": {"type": "integer"}},
}
_INSTANCES = {
    "type": "object",
    "required": ["service", "instances", "count"],
    "properties": {
        "service": {"type": "string"},
        "instances": {"type": "array"},
        "count": {"type": "integer"},
    },
}


def _json(schema):
    return {"content": {"application/json": {"schema": schema}}}


_DEPLOYMENT = {
    "type": "object",
    "required": ["deployment_id", "job_id", "job_version", "status", "groups"],
    "properties": {
        "deployment_id": {"type": "string"},
        "job_id": {"type": "string"},
        "job_version": {"type": "integer"},
        "status": {"enum": ["running", "successful", "failed", "cancelled"]},
        "status_description": {"type": "string"},
        "groups": {"type": "object"},
    },
}


def _op(summary, body=None, ok=_MESSAGE, errors=(400,), params=(), query=()):
    op = {
        "summary": summary,
        "responses": {
            "200": {"description": "ok", **_json(ok)},
            **{str(c): {"description": "error", **_json(_ERROR)} for c in errors},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, **_json(body)}
    parameters = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in params
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": schema} for name, schema in query
    ]
    if parameters:
        op["parameters"] = parameters
    return op


_USAGE = {
    "type": "object",
    "required": ["memory_rss_mb", "cpu_percent", "pids"],
    "properties": {
        "memory_rss_mb": {"type": "number"},
        "cpu_percent": {"type": "number"},
        "pids": {"type": "integer"},
    },
}

_ALLOC_STATS = {
    "type": "object",
    "required": ["tasks", "total", "time"],
    "properties": {
        "tasks": {"type": "object", "additionalProperties": _USAGE},
        "total": _USAGE,
        "time": {"type": "number"},
    },
}

SERVER_SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "orch server", "version": "0.1.0"},
    "paths": {
        "/register": {"post": _op("Register a node", _REGISTER, errors=(400, 403))},
        "/heartbeat": {"post": _op("Node heartbeat", _HEARTBEAT, errors=(400, 403, 404))},
        "/jobs": {
            "post": _op(
                "Submit a job: create it, or update the job of its "
                "job_id (unchanged: no new version, no evaluation; "
                "the latest evaluation is returned)",
                _JOB,
            ),
            "get": _op(
                "List jobs (X-Orch-Index; ?index=N&wait=30s blocks until any job changes)",
                ok={"type": "object"},
                errors=(400,),
            ),
        },
        "/jobs/plan": {
            "post": _op(
                "Dry run: what submitting the job would do; changes nothing", _JOB, ok=_PLAN
            )
        },
        "/jobs/{job_id}": {
            "put": _op("Update a job", _JOB, errors=(400, 404), params=["job_id"]),
            "delete": _op("Stop a job", errors=(404,), params=["job_id"]),
            "get": _op(
                "Get a job (X-Orch-Index; ?index=N&wait=30s blocks until the job changes)",
                ok={"type": "object"},
                errors=(400, 404),
                params=["job_id"],
            ),
        },
        "/jobs/{job_id}/delete": {"post": _op("Purge a job", errors=(404,), params=["job_id"])},
        "/jobs/{job_id}/restart": {
            "post": _op("Restart a stopped job", errors=(400, 404), params=["job_id"])
        },
        "/jobs/{job_id}/dispatch": {
            "post": _op(
                "Dispatch a parameterized job: a child job with this meta and payload",
                _DISPATCH,
                ok=_DISPATCHED,
                errors=(400, 404, 413),
                params=["job_id"],
            )
        },
        "/jobs/{job_id}/periodic/force": {
            "post": _op(
                "Launch a periodic job's child now",
                ok=_DISPATCHED,
                errors=(400, 404),
                params=["job_id"],
            )
        },
        "/jobs/{job_id}/versions": {
            "get": _op(
                "A job's kept versions, newest first, each with its diff to the one before",
                ok=_VERSIONS,
                errors=(404,),
                params=["job_id"],
            )
        },
        "/jobs/{job_id}/revert": {
            "post": _op(
                "Submit a kept version's spec as a new version (unchanged: a no-op)",
                _REVERT,
                ok=_REVERTED,
                errors=(400, 404),
                params=["job_id"],
            )
        },
        "/jobs/{job_id}/deployments": {
            "get": _op(
                "A job's deployments, newest first",
                ok={"type": "object", "required": ["deployments", "count"]},
                errors=(404,),
                params=["job_id"],
            )
        },
        "/jobs/{job_id}/deployment": {
            "get": _op(
                "A job's latest deployment", ok=_DEPLOYMENT, errors=(404,), params=["job_id"]
            )
        },
        "/jobs/{job_id}/rollout": {
            "post": _op(
                "Replace every allocation under the update rules, without a spec change",
                ok=_REVERTED,
                errors=(400, 404),
                params=["job_id"],
            )
        },
        "/deployments/{deployment_id}": {
            "get": _op("Get a deployment", ok=_DEPLOYMENT, errors=(404,), params=["deployment_id"])
        },
        "/deployments/{deployment_id}/promote": {
            "post": _op(
                "Promote a running deployment's canaries",
                ok=_DEPLOYMENT,
                errors=(400, 404),
                params=["deployment_id"],
            )
        },
        "/deployments/{deployment_id}/fail": {
            "post": _op(
                "Fail a running deployment (auto_revert rolls back)",
                ok=_DEPLOYMENT,
                errors=(400, 404),
                params=["deployment_id"],
            )
        },
        "/jobs/{job_id}/evaluations": {
            "get": _op(
                "A job's evaluations", ok={"type": "object"}, errors=(404,), params=["job_id"]
            )
        },
        "/nodes": {"get": _op("List nodes", ok={"type": "object"}, errors=())},
        "/nodes/{node_id}": {
            "get": _op("Get a node", ok={"type": "object"}, errors=(404,), params=["node_id"])
        },
        "/nodes/{node_id}/eligibility": {
            "post": _op(
                "Allow or refuse new placements on a node (it keeps what it runs)",
                _ELIGIBILITY,
                ok=_NODE_SCHEDULING,
                errors=(400, 404),
                params=["node_id"],
            )
        },
        "/nodes/{node_id}/drain": {
            "post": _op(
                "Start or update a node drain, or cancel it ({cancel: true})",
                _DRAIN,
                ok=_NODE_SCHEDULING,
                errors=(400, 404),
                params=["node_id"],
            )
        },
        "/evaluations/{eval_id}": {
            "get": _op(
                "Get an evaluation", ok={"type": "object"}, errors=(404,), params=["eval_id"]
            )
        },
        "/allocations/{alloc_id}": {
            "get": _op(
                "Get an allocation", ok={"type": "object"}, errors=(404,), params=["alloc_id"]
            )
        },
        "/allocations/{alloc_id}/logs/{task}": {
            "get": _op(
                "A task's log, relayed from its node",
                ok={"type": "string"},
                errors=(400, 404, 502),
                params=["alloc_id", "task"],
                query=_LOG_QUERY,
            )
        },
        "/allocations/{alloc_id}/stats": {
            "get": _op(
                "Measured resource use of an allocation's tasks, relayed from its node",
                ok=_ALLOC_STATS,
                errors=(404, 502),
                params=["alloc_id"],
            )
        },
        "/services": {"get": _op("Services with live instances", ok=_SERVICES, errors=())},
        "/services/{name}": {
            "get": _op(
                "A service's instances (healthy=true: only healthy ones)",
                ok=_INSTANCES,
                params=["name"],
                query=(("healthy", {"type": "string", "enum": ["true", "false", "1", "0"]}),),
            )
        },
        "/health": {"get": _op("Liveness", ok={"type": "object"}, errors=())},
        "/status/leader": {
            "get": _op("Which server leads the cluster", ok={"type": "object"}, errors=())
        },
        "/metrics": {"get": _op("Prometheus metrics", ok={"type": "string"}, errors=())},
    },
}

_ALLOC_BODY = {
    "type": "object",
    "required": ["allocation_id", "job_id", "task_group"],
    "properties": {
        "allocation_id": {"type": "string"},
        "job_id": {"type": "string"},
        "job_type": {"type": "string", "enum": ["batch", "service", "system", "sysbatch"]},
        "task_group": {
            "type": "object",
            "required": ["name", "tasks"],
            "properties": {"name": {"type": "string"}, "tasks": {"type": "array", "items": _TASK}},
        },
    },
}

AGENT_SPEC = {
    "openapi": "3.0.3",
    "info": {"title": "orch agent", "version": "0.1.0"},
    "paths": {
        "/allocations": {"post": _op("Run an allocation", _ALLOC_BODY)},
        "/allocations/batch": {
            "post": _op(
                "Run several allocations (one push per node); a result per allocation",
                {
                    "type": "object",
                    "required": ["allocations"],
                    "properties": {"allocations": {"type": "array", "items": _ALLOC_BODY}},
                },
            )
        },
        "/allocations/stop": {
            "post": _op(
                "Stop and remove several allocations side by side; a result per allocation"
                " (stopped, not_found or an error)",
                {
                    "type": "object",
                    "required": ["allocations"],
                    "properties": {"allocations": {"type": "array", "items": {"type": "string"}}},
                },
            )
        },
        "/allocations/hurry": {
            "post": _op(
                "A client waits on these allocations: their next reports go at once, not"
                " batched; answers how many are on this node",
                {
                    "type": "object",
                    "required": ["allocations"],
                    "properties": {"allocations": {"type": "array", "items": {"type": "string"}}},
                },
            )
        },
        "/allocations/{alloc_id}": {
            "get": _op(
                "An allocation's status", ok={"type": "object"}, errors=(404,), params=["alloc_id"]
            ),
            "delete": _op("Stop and remove an allocation", errors=(404,), params=["alloc_id"]),
        },
        "/allocations/{alloc_id}/logs/{task}": {
            "get": _op(
                "A task's log",
                ok={"type": "string"},
                errors=(400, 404),
                params=["alloc_id", "task"],
                query=_LOG_QUERY,
            )
        },
        "/allocations/{alloc_id}/stats": {
            "get": _op(
                "Measured resource use of an allocation's tasks",
                ok=_ALLOC_STATS,
                errors=(404,),
                params=["alloc_id"],
            )
        },
        "/health": {"get": _op("Liveness", ok={"type": "object"}, errors=())},
    },
}
