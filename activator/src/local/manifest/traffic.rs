//! `spec.traffic`: percent splits and tags, checked against the Service's revisions.

use std::collections::BTreeSet;

use super::doc::Doc;
use super::yaml::TrafficYaml;
use super::{ManifestError, ServicePlan, Target};

/// Traffic of one document, before revision names are checked.
pub(super) struct PendingTraffic<'a> {
    pub(super) doc: Doc<'a>,
    pub(super) entries: Option<Vec<TrafficYaml>>,
}

/// Checks the traffic block against the Service's revisions.
pub(super) fn resolve_traffic(
    t: &PendingTraffic<'_>,
    svc: &ServicePlan,
) -> Result<Vec<Target>, ManifestError> {
    let latest = svc
        .revisions
        .last()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let Some(entries) = &t.entries else {
        return Ok(vec![Target {
            revision: latest,
            percent: 100,
            tag: None,
            latest: true,
        }]);
    };
    let doc = &t.doc;
    let at = ["spec", "traffic"];
    let mut out = Vec::new();
    let mut tags = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let field = format!("traffic[{i}]");
        let at_i = ["spec", field.as_str()];
        if e.configuration_name.is_some() || e.url.is_some() {
            return Err(doc.err(&at_i, "configurationName and url are not supported"));
        }
        let revision = match (&e.revision_name, e.latest_revision) {
            (Some(_), Some(true)) => {
                return Err(doc.err(
                    &at_i,
                    "revisionName may not be set when latestRevision is true",
                ));
            }
            (Some(r), _) => {
                if !svc.revisions.iter().any(|x| &x.name == r) {
                    let known: Vec<&str> = svc.revisions.iter().map(|r| r.name.as_str()).collect();
                    return Err(doc.err(
                        &["spec", "traffic", "revisionName"],
                        format!(
                            "revision {r:?} is not declared for this Service (declared: {})",
                            known.join(", ")
                        ),
                    ));
                }
                r.clone()
            }
            (None, Some(true)) => latest.clone(),
            (None, _) => {
                return Err(doc.err(&at_i, "set revisionName, or latestRevision: true"));
            }
        };
        let percent = e.percent.unwrap_or(0);
        if percent > 100 {
            return Err(doc.err(
                &["spec", "traffic", "percent"],
                format!("{percent}: must be between 0 and 100"),
            ));
        }
        if let Some(tag) = &e.tag {
            if !is_dns_label(tag) || tag.len() + svc.name.len() + 1 > 63 {
                return Err(doc.err(
                    &["spec", "traffic", "tag"],
                    format!("{tag:?}: <tag>-<service> must be a DNS label"),
                ));
            }
            if !tags.insert(tag.clone()) {
                return Err(doc.err(
                    &["spec", "traffic", "tag"],
                    format!("{tag:?} is used twice"),
                ));
            }
        }
        out.push(Target {
            revision,
            percent,
            tag: e.tag.clone(),
            latest: e.latest_revision == Some(true),
        });
    }
    let sum: u32 = out.iter().map(|t| t.percent).sum();
    if sum != 100 {
        return Err(doc.err(&at, format!("traffic targets sum to {sum}, want 100")));
    }
    Ok(out)
}

pub(super) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
