"""How steps are spread over machines: the Celery broker that hands them to workers.

One section (`ClusterConfig`), read from the environment by every process of a deployment
(the webserver, the daemon, the runs, the workers), so that all of them agree. Empty, the
default: every step runs in its run's own processes on this machine, as `make demo` does.
"""

from __future__ import annotations

from rar_pipeline.core.config import Section, setting


class ClusterConfig(Section):
    """Where steps run: in the run's processes, or on Celery workers by queue."""

    celery_broker_url: str = setting(
        "", "the Celery broker that hands steps to workers (redis://host:6379/0); empty: "
        "steps run in their run's own processes on this machine",
        env="RAR_CELERY_BROKER_URL", shown="(none)",
    )  # fmt: skip
    celery_backend_url: str = setting(
        "", "where workers report step results to the run", env="RAR_CELERY_BACKEND_URL",
        shown="the broker URL",
    )  # fmt: skip
    celery_visibility_timeout_s: int = setting(
        3600, "seconds before a step whose worker vanished without a word (its machine "
        "lost) is handed to another worker; keep it above the longest step, or a step "
        "still running is started a second time (a Redis broker's visibility timeout)",
        env="RAR_CELERY_VISIBILITY_TIMEOUT_S", ge=10,
    )  # fmt: skip

    @property
    def on_workers(self) -> bool:
        return bool(self.celery_broker_url)

    @property
    def backend_url(self) -> str:
        return self.celery_backend_url or self.celery_broker_url
