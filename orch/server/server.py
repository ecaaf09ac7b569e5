"""The control plane: wires state, broker, planner, workers, pusher and heartbeats.

The API calls the methods here; each one validates, writes state durably,
then hands follow-up work (evaluations, pushes) to background threads, so no
request ever waits for placement or for an agent.

Over 400 lines on purpose: it is the one place where every server-side
part meets (leadership terms, the job, node and deployment entry points the
API calls); split, each half would import the other.
"""

from __future__ import annotations

import logging
import time

from orch.config import ServerConfig
from orch.datadir import lock_data_dir
from orch.errors import Conflict, DataDirError, NotFound, StorageError
from orch.jobspec import parse_job
from orch.security import check_bind
from orch.server.broker import EvalBroker
from orch.server.deploywatcher import DeploymentWatcher, promote
from orch.server.dispatch import dispatch
from orch.server.drainer import Drainer
from orch.server.heartbeat import HeartbeatMonitor
from orch.server.hurry import Hurrier
from orch.server.leadership import LeaseLeadership, SoleLeadership
from orch.server.nodes import NodeOps
from orch.server.periodic import PeriodicLauncher, next_launch
from orch.server.planner import Dispatch, ServerPlanner, new_eval
from orch.server.push import Pusher, PushFailure
from orch.server.state import StateStore
from orch.server.status import job_status, job_summary
from orch.server.submitplan import SubmitPlanner
from orch.server.sync import AllocSync
from orch.server.ui.streams import StreamSlots
from orch.server.worker import SchedulerWorker
from orch.structs import (
    TERMINAL_EVAL,
    Allocation,
    AllocStatus,
    Deployment,
    DesiredStatus,
    EvalStatus,
    Evaluation,
    Job,
    JobStatus,
    Node,
    TriggeredBy,
    replace,
    short_id,
)

log = logging.getLogger(__name__)


class Server(NodeOps):
    """One orch control plane (its node operations: ``orch.server.nodes``)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self._stopping = False
        self.store = StateStore(
            config.data_dir, database=config.database, versions_kept=config.job_versions
        )
        self.broker = EvalBroker()
        self.pusher = Pusher(
            endpoint_of=self.endpoint_of,
            on_failed=self._push_failed,
            on_suspect=self._node_suspect,
            wanted=self._still_wanted,
            workers=config.push_workers,
            timeout=config.push_timeout,
            retries=config.push_retries,
            token=config.token,
            suspect_hold=config.node_ttl,
        )
        self.monitor = HeartbeatMonitor(config.node_ttl, self.node_down)
        # A blocking read about to wait on a batch job: its nodes report at once.
        self.hurrier = Hurrier(self.store, self.endpoint_of, token=config.token)
        self.store.changes.on_wait = self.hurrier.waiting
        # The scheduler side sees narrow interfaces, never the Server: the
        # store as state, the broker as queue, a planner, one dispatch.
        self.dispatch = Dispatch(self.pusher, self.store.after_commit)
        self.planner = ServerPlanner(self.store, self.broker, self.dispatch)
        self.sync = AllocSync(self.store, self.planner, self.dispatch)
        self.workers = [
            SchedulerWorker(self.broker, self.store, self.planner, i)
            for i in range(config.scheduler_workers)
        ]
        # Set by start() (SQLite, workers on): a new small batch job is then
        # planned in its submit's transaction (orch.server.submitplan). Not
        # before: a server whose scheduler does not run places nothing.
        self.submit_planner: SubmitPlanner | None = None
        self.drainer = Drainer(self.store, self.planner, self.dispatch)
        self.periodic = PeriodicLauncher(self.store, self.broker.enqueue)
        self.deployments = DeploymentWatcher(self.store, self._evaluate, self.revert_job)
        # The UI's open event and log streams, capped (orch.server.ui.streams).
        self.ui_streams = StreamSlots(config.ui_max_streams)
        self.started = time.time()
        self.url = config.advertise or ""
        # SQLite until start() knows better: routes answer as the leader.
        self.leadership: SoleLeadership | LeaseLeadership = SoleLeadership()

    # ---- lifecycle ---------------------------------------------------------

    def start(self, url: str = "") -> None:
        """Serve as a follower until leadership is gained (at once on SQLite).

        ``url`` is where this server's API listens: agents are redirected to
        the leader's, which it advertises in its lease."""
        self.url = self.config.advertise or url
        if self.config.database:
            self.leadership = LeaseLeadership(
                self.config.database, self.url, lease=self.config.lease
            )
            self.store.fence = self.leadership.fence
            self.store.on_remote_evals.append(self._remote_evals)
            self.store.on_remote_stops.append(self._remote_stops)
            self.store.on_remote_nodes.append(self._remote_nodes)
        else:
            self.leadership = SoleLeadership(self.url)
        self.broker.set_enabled(False)
        for worker in self.workers:
            worker.start()  # they wait on the broker, enabled while leading
        if self.workers and not self.store.backend.shared:
            self.submit_planner = SubmitPlanner(self.broker, self.store)
        self.leadership.start(self._lead, self._follow)

    def _lead(self, term: int) -> None:
        """Leadership gained: start what only the leader runs (Nomad's
        establishLeadership): the broker restored from the store, heartbeat
        deadlines re-armed, periodic launches, drains, deployments."""
        started = time.monotonic()
        if not self._caught_up():
            return  # lost again before the database answered
        self.broker.set_enabled(True)
        self.sync.forget_all()  # beats went to another leader meanwhile
        unfinished = self.store.unfinished_evals()
        if unfinished:
            log.info("re-enqueueing %d unfinished evaluations", len(unfinished))
            self.broker.enqueue_many(unfinished)
        # Nodes get a full TTL after a restart or a failover before they can
        # be lost: no server was listening to them, so silence proves nothing.
        monitor = HeartbeatMonitor(self.config.node_ttl, self.node_down)
        for node in self.store.list_nodes():
            if node.healthy:
                monitor.reset(node.node_id)
        self.monitor = monitor
        self._leader_threads()
        self.monitor.start()
        self.drainer.start()  # drains stored before a restart carry on
        self.periodic.start()
        self.deployments.start()
        log.info("leading term %d (took %.3fs)", term, time.monotonic() - started)

    def _caught_up(self) -> bool:
        """The predecessor's last commits in memory before any plan is
        computed (its fence lets none land after our take-over); retried
        while the database is away, given up if leadership goes first."""
        while True:
            try:
                self.store.catch_up()
                return True
            except StorageError as exc:
                log.warning("new leader cannot read the change log yet: %s", exc.message)
            if not self.leadership.is_leader():
                return False
            time.sleep(0.2)

    def _leader_threads(self) -> None:
        """Fresh leader-only threads: a thread starts once, a term may come again."""
        self.drainer = Drainer(self.store, self.planner, self.dispatch)
        self.periodic = PeriodicLauncher(self.store, self.broker.enqueue)
        self.deployments = DeploymentWatcher(self.store, self._evaluate, self.revert_job)

    def _follow(self, term: int) -> None:
        """Leadership lost: stop scheduling first, then the rest (Nomad's
        revokeLeadership); the objects stay, idle, for the routes."""
        self.broker.set_enabled(False)
        self.monitor.stop()
        self.periodic.stop()
        self.drainer.stop()
        self.deployments.stop()
        self._leader_threads()
        # Stepping down on shutdown is the normal path; losing a term while
        # serving is what an operator should notice.
        level = logging.INFO if self._stopping else logging.WARNING
        log.log(level, "following since term %d ended", term)

    def _remote_evals(self, evals: list[Evaluation]) -> None:
        """Evaluations another server stored (a job submitted there)."""
        self.broker.enqueue_many([e for e in evals if e.status not in TERMINAL_EVAL])

    def _remote_stops(self, allocs: list[Allocation]) -> None:
        """Allocations another server stopped or purged: the leader tells their
        agents, and blocked evaluations may fit in the room freed."""
        if self.leadership.is_leader():
            log.info("pushing %d stops committed by another server", len(allocs))
            self.dispatch.stop(allocs)
            self.broker.unblock()

    def _remote_nodes(self, nodes: list[Node]) -> None:
        """Nodes another server drained or made (in)eligible: the leader's
        drainer takes the drains, blocked evaluations try eligible nodes."""
        if not self.leadership.is_leader():
            return
        for node in nodes:
            if node.drain is not None:
                log.info("node %s: drain started on another server", node.node_id[:8])
                self.drainer.watch(node.node_id)
        if any(node.eligible for node in nodes):
            self.broker.unblock()

    def _push_if_leader(self, allocs: list[Allocation]) -> None:
        """Stops this server committed: pushed by the leader only (issue #13);
        a follower's reach the leader through the change log (_remote_stops)."""
        if self.leadership.is_leader():
            self.dispatch.stop(allocs)
        elif allocs:
            log.info("%d stops committed: left to the leader to push", len(allocs))

    def stop(self) -> None:
        self._stopping = True
        self.submit_planner = None  # a submit now leaves its job to the broker
        self.leadership.stop()  # steps down: the leader-only threads stop
        for worker in self.workers:
            worker.stop()
        self.broker.close()
        self.pusher.close()
        self.hurrier.close()
        self.store.close()

    # ---- evaluations -----------------------------------------------------

    def _cancel_evals(self, dropped: list[Evaluation], why: str) -> None:
        if dropped:
            now = time.time()
            self.store.put_evals(
                [
                    replace(e, status=EvalStatus.CANCELED, status_description=why, modify_time=now)
                    for e in dropped
                ]
            )

    # ---- jobs -------------------------------------------------------------
    #
    # The store checks and writes each job change under its lock; the broker
    # calls ride along (on_commit) so the queue follows the commit order.

    def submit_job(self, body, job_id: str | None = None) -> tuple[Job, Evaluation]:
        """POST /jobs (create or update) or PUT /jobs/<job_id> (update only).

        A job submitted again unchanged is not written and triggers no
        evaluation; the job's latest evaluation is returned."""
        if job_id is not None and self.store.get_job(job_id) is None:
            raise NotFound("作业不存在")
        job = parse_job(body, job_id, max_count=self.config.max_count)
        existing = self.store.get_job(job.job_id)
        if existing is not None and existing.rollout:
            # A rollout is not part of the spec a user submits: keep it, or
            # submitting the same spec again would replace every copy.
            job = replace(job, rollout=existing.rollout)
        job, ev, changed = self.store.submit_job(
            job,
            lambda trigger: new_eval(job.job_id, trigger, time.time()),
            must_exist=job_id is not None,
            on_commit=self.broker.enqueue,
            plan_now=self.submit_planner,
            on_placed=self.dispatch.place,
        )
        if not changed:
            log.info(
                "job %s submitted unchanged: version %d kept, no evaluation",
                job.job_id,
                job.version,
            )
        return job, ev

    def revert_job(self, job_id: str, version: int) -> tuple[Job, Evaluation]:
        """POST /jobs/<id>/revert: submit a kept version's spec as a new version.

        Reverting to the spec the job has already is a no-op, as an unchanged
        submit is; NotFound for an unknown job or version."""
        old = self.store.job_version(job_id, version)
        job, ev, changed = self.store.submit_job(
            replace(old, status=JobStatus.PENDING),
            lambda trigger: new_eval(job_id, trigger, time.time()),
            must_exist=True,
            on_commit=self.broker.enqueue,
        )
        log.info(
            "job %s reverted to version %d: %s",
            job_id,
            version,
            f"now version {job.version}" if changed else "unchanged",
        )
        return job, ev

    # ---- deployments -------------------------------------------------------

    def _evaluate(self, job_id: str) -> None:
        self.planner.create_evals([job_id], TriggeredBy.DEPLOYMENT_WATCHER)

    def promote_deployment(self, deployment_id: str) -> Deployment:
        """POST /deployments/<id>/promote: let the rollout go past its canaries."""
        d = promote(self.store, deployment_id, time.time())
        self._evaluate(d.job_id)
        return d

    def fail_deployment(self, deployment_id: str) -> Deployment:
        """POST /deployments/<id>/fail (rolls back under auto_revert)."""
        return self.deployments.fail(deployment_id)

    def rollout_job(self, job_id: str) -> tuple[Job, Evaluation]:
        """POST /jobs/<id>/rollout: replace every copy under the update rules.

        A new version that differs only in its rollout number: each group's
        allocation hash changes, so the scheduler replaces copies as for a
        changed spec (hashicorp/nomad#698)."""
        current = self.store.require_job(job_id)
        if current.stopped:
            raise Conflict(f"job {job_id} is stopped")
        job, ev, _changed = self.store.submit_job(
            replace(current, rollout=current.rollout + 1, status=JobStatus.PENDING),
            lambda trigger: new_eval(job_id, trigger, time.time()),
            must_exist=True,
            on_commit=self.broker.enqueue,
        )
        log.info("job %s rollout %d: version %d", job_id, job.rollout, job.version)
        return job, ev

    def stop_job(self, job_id: str) -> Evaluation:
        """Stop the job: its deregister evaluation, as written."""
        ev = replace(
            new_eval(job_id, TriggeredBy.JOB_DEREGISTER, time.time()),
            status=EvalStatus.COMPLETE,
            status_description="job stopped",
        )
        dropped: list[Evaluation] = []
        stopped = self.store.stop_job(
            job_id, ev, on_commit=lambda: dropped.extend(self.broker.cancel_job(job_id))
        )
        self._cancel_evals(dropped, "job stopped")
        self._push_if_leader(stopped)
        if stopped:
            self.broker.unblock()
        return ev

    def restart_job(self, job_id: str) -> Evaluation:
        return self.store.restart_job(
            job_id,
            lambda trigger: new_eval(job_id, trigger, time.time()),
            on_commit=self.broker.enqueue,
        )

    def delete_job(self, job_id: str) -> None:
        # The queued evaluations go with the job: they are purged with it.
        allocs = self.store.delete_job(job_id, on_commit=lambda: self.broker.cancel_job(job_id))
        # Agents forget every allocation of the job, finished ones included.
        self._push_if_leader(allocs)
        self.broker.unblock()

    def job_status(self, job: Job, allocs: list[Allocation] | None = None) -> JobStatus:
        if job.is_parent and not job.stopped:
            return JobStatus.RUNNING  # as Nomad: it runs by launching children
        if allocs is None:
            allocs = self.store.allocs_for_job(job.job_id)
        return job_status(job, allocs)

    def job_summary(self, job: Job, allocs: list[Allocation]) -> dict:
        """Per-group allocation counts and queued placements (GET /jobs)."""
        latest = max(
            self.store.evals_for_job(job.job_id), key=lambda e: e.create_time, default=None
        )
        return job_summary(job, allocs, latest)

    # ---- periodic and parameterized jobs ----------------------------------

    def dispatch_job(self, job_id: str, body) -> tuple[Job, Evaluation | None]:
        """POST /jobs/<id>/dispatch: a child of a parameterized job."""
        return dispatch(self.store, job_id, body, self.broker.enqueue, now=time.time())

    def force_periodic(self, job_id: str) -> Job:
        """POST /jobs/<id>/periodic/force: a child of a periodic job, now."""
        return self.periodic.force(job_id)

    def children_view(self, job: Job) -> dict:
        """A parent's children (id, status) and, if periodic, its next launch."""
        children = sorted(self.store.children_of(job.job_id), key=lambda j: j.submit_time)
        out: dict = {
            "children": [{"job_id": c.job_id, "status": self.job_status(c).value} for c in children]
        }
        if job.periodic is not None:
            out["next_launch"] = None if job.stopped else next_launch(job.periodic, time.time())
        return out

    # ---- pushes ---------------------------------------------------------------

    def _still_wanted(self, alloc: Allocation) -> bool:
        """Whether a placement waiting to be pushed should still run."""
        current = self.store.get_alloc(alloc.allocation_id)
        return (
            current is not None
            and current.node_id == alloc.node_id
            and current.desired_status == DesiredStatus.RUN
            and not current.terminal()
        )

    def _push_failed(self, alloc: Allocation, failure: PushFailure) -> None:
        current = self.store.get_alloc(alloc.allocation_id)
        if (
            current is None
            or current.desired_status != DesiredStatus.RUN
            or current.client_status != AllocStatus.PENDING
        ):
            return
        now = time.time()
        node = self.store.get_node(alloc.node_id)
        if (
            not failure.refused
            and node is not None
            and node.healthy
            and now - current.create_time < self.config.node_ttl
        ):
            # No answer (an agent restarting, a hung one): it may have
            # accepted the allocation already, so failing it and placing a
            # replacement could run the work twice. The node's heartbeats
            # decide: they report the allocation, or it is pushed again
            # (AllocSync), or the node is declared down and the allocation
            # lost. A refusal (4xx, nothing listening) is certain: the
            # allocation is failed and placed elsewhere at once, and the
            # node, suspect, is not offered the replacement.
            log.info(
                "alloc %s: push unanswered, node %s alive: its heartbeats decide",
                short_id(alloc.allocation_id),
                alloc.node_id[:8],
            )
            return
        self.store.update_allocs(
            [
                replace(
                    current,
                    client_status=AllocStatus.FAILED,
                    desired_status=DesiredStatus.STOP,
                    end_time=now,
                    modify_time=now,
                    description=f"push to node failed: {failure.message}",
                )
            ]
        )
        self.planner.create_evals([alloc.job_id], TriggeredBy.ALLOC_FAILURE)

    # ---- dry run -------------------------------------------------------------

    def plan_job(self, body) -> dict:
        """POST /jobs/plan: what submitting ``body`` would do; stores nothing."""
        from orch.server.planning import dry_run

        return dry_run(self.store, body, max_count=self.config.max_count)


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT; returns the exit code."""
    import signal

    from orch import collector
    from orch.server.api import make_app
    from orch.server.inline import server_routes
    from orch.server.parkedreads import ParkedReads, job_of_route
    from orch.server.state.group import TurnCommit
    from orch.server.wsgi import http_server
    from orch.wsgiloop import close_after_run

    check_bind("server", config.bind, config.token, config.insecure)
    try:
        if not config.database:
            # One writer per SQLite file; several PostgreSQL servers share
            # the database, not a data dir.
            lock_data_dir(config.data_dir, "server")
        server = Server(config)
    except (StorageError, DataDirError) as exc:
        log.error("%s", exc.message)
        return 1
    # SQLite: the inline writes of one I/O loop turn share a commit.
    writes = None if server.store.backend.shared else TurnCommit(server.store)
    inline, waiting = server_routes(server)
    app = make_app(server)
    parked_reads = ParkedReads(app, server.store.changes, job_of_route(server.store))
    http = http_server(app, config, inline, writes, waiting, parked_reads)

    def _exit(signum, _frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    host, port = http.effective_host, http.effective_port
    collector.tune()  # the state is loaded: kept out of the collector's passes
    server.start(f"http://{_url_host(host)}:{port}")
    log.info("server listening on http://%s:%s data_dir=%s", host, port, config.data_dir)
    try:
        http.run()
    finally:
        log.info("server shutting down")
        # Open UI streams end first: waitress closing under them logs errors.
        server.store.changes.close()
        server.ui_streams.wait_idle(5.0)
        close_after_run(http)  # the workers' writes end before the store closes
        parked_reads.close()
        server.stop()
    return 0


def _url_host(host: str) -> str:
    """A bind address as a URL's host: IPv6 in brackets, 0.0.0.0 as this machine."""
    if host in ("0.0.0.0", "::", ""):
        import socket

        return socket.getfqdn()
    return f"[{host}]" if ":" in host else host
