//! Building blocks of the exposition: families and series from plain values, so each
//! feature builds its own families at scrape time (as ebpf_exporter's collectors do).

use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

pub fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut lp = LabelPair::default();
            lp.set_name((*k).to_string());
            lp.set_value((*v).to_string());
            lp
        })
        .collect()
}

pub fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<proto::Metric>,
) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(name.to_string());
    mf.set_help(help.to_string());
    mf.set_field_type(kind);
    mf.set_metric(metrics);
    mf
}

pub fn counter(pairs: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels(pairs));
    let mut c = proto::Counter::default();
    c.set_value(value);
    m.set_counter(c);
    m
}

pub fn gauge(pairs: &[(&str, &str)], value: f64) -> proto::Metric {
    let mut m = proto::Metric::from_label(labels(pairs));
    let mut g = proto::Gauge::default();
    g.set_value(value);
    m.set_gauge(g);
    m
}
