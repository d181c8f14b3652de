"""Party 0's Prometheus metrics (served at ``GET /metrics`` of the patient API).

One registry per party process; the MPC engine and the patient API record into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infra.metrics import LATENCY_BUCKETS


@dataclass
class PatientSideMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.queue_depth = Gauge(
            "crypto_doctor_queue_depth", "Cases waiting for their encrypted prediction", registry=r
        )
        self.cases_submitted = Counter(
            "crypto_doctor_cases_submitted", "Images accepted and stored as cases", registry=r
        )
        self.uploads_rejected = Counter(
            "crypto_doctor_uploads_rejected",
            "Uploads refused before anything was stored, by error code",
            ["code"],
            registry=r,
        )
        self.predictions = Counter(
            "crypto_doctor_predictions", "Encrypted predictions recorded", registry=r
        )
        self.inference_failures = Counter(
            "crypto_doctor_inference_failures", "Cases whose image could not be run", registry=r
        )
        self.prediction_latency = Histogram(
            "crypto_doctor_prediction_latency_seconds",
            "Upload stored -> encrypted prediction recorded, per case",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "crypto_doctor_batch_seconds",
            "One encrypted forward pass of a batch (both parties)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "crypto_doctor_batch_size",
            "Images per encrypted forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.party_restarts = Gauge(
            "crypto_doctor_party_restarts",
            "Times the supervisor restarted the MPC pair since it started",
            registry=r,
        )
