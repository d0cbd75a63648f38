//! Prometheus metrics of the operator (text exposition at `/metrics`).

use std::collections::BTreeSet;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `kube`, `registry`, `job`, `finalizer`…
    pub reason: String,
}

/// Label of the build-duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `succeeded` or `failed`.
    pub outcome: String,
}

/// Every metric the operator exports.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub builds_in_progress: Gauge,
    pub build_duration: Family<OutcomeLabels, Histogram>,
    building: Mutex<BTreeSet<String>>,
}

fn duration_histogram() -> Histogram {
    // 5 s … ~3 h.
    Histogram::new(exponential_buckets(5.0, 2.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kitfleet_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let builds_in_progress = Gauge::default();
        let build_duration = Family::<OutcomeLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "reconciles",
            "NodeImage reconciliations",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by reason",
            errors.clone(),
        );
        registry.register(
            "builds_in_progress",
            "Build Jobs running",
            builds_in_progress.clone(),
        );
        registry.register(
            "build_duration_seconds",
            "Duration of finished build Jobs",
            build_duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            builds_in_progress,
            build_duration,
            building: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Counts a failed reconciliation.
    pub fn error(&self, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records whether the NodeImage `name` has a build running.
    pub fn set_building(&self, name: &str, building: bool) {
        let mut set = self.building.lock().unwrap_or_else(|p| p.into_inner());
        if building {
            set.insert(name.to_string());
        } else {
            set.remove(name);
        }
        self.builds_in_progress
            .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
    }

    /// Records a finished build.
    pub fn build_finished(&self, succeeded: bool, seconds: f64) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.build_duration
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .observe(seconds);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_metric() {
        let m = Metrics::default();
        m.reconciles.inc();
        m.error("registry");
        m.set_building("a", true);
        m.set_building("b", true);
        m.set_building("a", false);
        m.build_finished(true, 42.0);
        let text = m.encode();
        for want in [
            "kitfleet_operator_reconciles_total 1",
            "kitfleet_operator_reconcile_errors_total{reason=\"registry\"} 1",
            "kitfleet_operator_builds_in_progress 1",
            "kitfleet_operator_build_duration_seconds_count{outcome=\"succeeded\"} 1",
            "kitfleet_operator_build_duration_seconds_sum{outcome=\"succeeded\"} 42.0",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
