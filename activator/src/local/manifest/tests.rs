use super::*;

const HELLO: &str = r#"apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    spec:
      containers:
        - command: ["helloworld"]
          env:
            - name: TARGET
              value: blue
"#;

fn err(sources: &[(&str, &str)]) -> String {
    match parse(sources, &autoscaler::Config::default()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn one_document_is_one_revision_with_all_traffic() {
    let (svcs, warnings) = parse(&[("a.yaml", HELLO)], &autoscaler::Config::default()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(svcs.len(), 1);
    let s = &svcs[0];
    assert_eq!(
        (s.name.as_str(), s.namespace.as_str()),
        ("hello", "default")
    );
    assert_eq!(s.revisions.len(), 1);
    let r = &s.revisions[0];
    assert_eq!(r.name, "hello-00001");
    assert_eq!(r.container_port, 8080);
    assert_eq!(r.env, vec![("TARGET".to_owned(), "blue".to_owned())]);
    assert_eq!(r.timeout, Duration::from_secs(300));
    assert_eq!(
        s.traffic,
        vec![Target {
            revision: "hello-00001".into(),
            percent: 100,
            tag: None,
            latest: true,
        }]
    );
}

#[test]
fn later_documents_are_new_revisions_and_the_last_traffic_wins() {
    let second = HELLO.replace("value: blue", "value: green").replace(
        "  template:\n",
        "  traffic:\n    - revisionName: hello-00001\n      percent: 80\n    - latestRevision: true\n      percent: 20\n      tag: candidate\n  template:\n",
    );
    let text = format!("{HELLO}---\n{second}");
    let (svcs, _) = parse(&[("a.yaml", &text)], &autoscaler::Config::default()).unwrap();
    let s = &svcs[0];
    let names: Vec<&str> = s.revisions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["hello-00001", "hello-00002"]);
    assert_eq!(s.revisions[1].env[0].1, "green");
    assert_eq!(
        s.traffic,
        vec![
            Target {
                revision: "hello-00001".into(),
                percent: 80,
                tag: None,
                latest: false,
            },
            Target {
                revision: "hello-00002".into(),
                percent: 20,
                tag: Some("candidate".into()),
                latest: true,
            }
        ]
    );
    assert!(s.reachable("hello-00001") && s.reachable("hello-00002"));
}

#[test]
fn template_names_are_used_and_checked() {
    let named = HELLO.replace(
        "  template:\n    spec:",
        "  template:\n    metadata:\n      name: hello-blue\n    spec:",
    );
    let (svcs, _) = parse(&[("a.yaml", &named)], &autoscaler::Config::default()).unwrap();
    assert_eq!(svcs[0].revisions[0].name, "hello-blue");
    let bad = named.replace("hello-blue", "other-blue");
    let e = err(&[("a.yaml", &bad)]);
    assert!(
        e.starts_with("a.yaml:8: spec.template.metadata.name:"),
        "{e}"
    );
}

#[test]
fn type_errors_name_file_line_and_field() {
    let bad = HELLO.replace(
        "    spec:\n      containers:",
        "    spec:\n      containerConcurrency: lots\n      containers:",
    );
    let e = err(&[("svc.yaml", &bad)]);
    assert!(e.starts_with("svc.yaml:8: "), "{e}");
    assert!(e.contains("containerConcurrency"), "{e}");
    // In a second document, lines count from the top of the file.
    let text = format!("{HELLO}---\n{bad}");
    let e = err(&[("svc.yaml", &text)]);
    assert!(e.starts_with("svc.yaml:21: "), "{e}");
}

#[test]
fn syntax_errors_name_the_line() {
    let e = err(&[("x.yaml", "metadata:\n  name: [unclosed\nspec: {}\n")]);
    assert!(e.starts_with("x.yaml:"), "{e}");
    assert!(
        e.contains("line") || e.contains(":3:") || e.contains(":2:"),
        "{e}"
    );
}

#[test]
fn a_container_needs_an_image_or_a_command() {
    let bad = HELLO.replace(r#"- command: ["helloworld"]"#, "- name: app");
    let e = err(&[("a.yaml", &bad)]);
    assert!(
        e.contains("a.yaml:8: spec.template.spec.containers:"),
        "{e}"
    );
    assert!(e.contains("needs an `image`"), "{e}");
    let bad = HELLO.replace(
        r#"- command: ["helloworld"]"#,
        "- image: dev.local/hello:local\n          imagePullPolicy: Sometimes",
    );
    let e = err(&[("a.yaml", &bad)]);
    assert!(
        e.contains("containers.imagePullPolicy: \"Sometimes\""),
        "{e}"
    );
}

#[test]
fn image_without_command_runs_the_image_with_its_args_and_working_dir() {
    let img = HELLO.replace(
        r#"- command: ["helloworld"]"#,
        "- image: dev.local/hello:local\n          args: [\"-v\"]\n          workingDir: /srv\n          imagePullPolicy: Never",
    );
    let (svcs, warnings) =
        parse(&[("a.yaml", &img)], &autoscaler::Config::default()).expect("valid");
    let r = &svcs[0].revisions[0];
    assert_eq!(r.image.as_deref(), Some("dev.local/hello:local"));
    assert!(r.program.as_os_str().is_empty());
    assert_eq!(r.args, ["-v"]);
    assert_eq!(r.working_dir.as_deref(), Some("/srv"));
    assert_eq!(r.image_pull_policy.as_deref(), Some("Never"));
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn traffic_is_validated() {
    let with = |traffic: &str| {
        HELLO.replace(
            "  template:\n",
            &format!("  traffic:\n{traffic}  template:\n"),
        )
    };
    let cases = [
        (
            "    - latestRevision: true\n      percent: 90\n",
            "spec.traffic: traffic targets sum to 90, want 100",
        ),
        (
            "    - revisionName: hello-00009\n      percent: 100\n",
            "spec.traffic.revisionName: revision \"hello-00009\" is not declared",
        ),
        (
            "    - revisionName: hello-00001\n      latestRevision: true\n      percent: 100\n",
            "revisionName may not be set when latestRevision is true",
        ),
        (
            "    - latestRevision: true\n      percent: 100\n      tag: a\n    - latestRevision: true\n      percent: 0\n      tag: a\n",
            "\"a\" is used twice",
        ),
        (
            "    - latestRevision: true\n      percent: 100\n      tag: Bad_Tag\n",
            "must be a DNS label",
        ),
        (
            "    - latestRevision: false\n      percent: 100\n",
            "latestRevision: false needs a revisionName",
        ),
    ];
    for (traffic, want) in cases {
        let e = err(&[("a.yaml", &with(traffic))]);
        assert!(e.contains(want), "{traffic}: {e}");
        assert!(e.starts_with("a.yaml:"), "{e}");
    }
}

#[test]
fn ports_and_probes() {
    let with = |extra: &str| HELLO.replace("          env:\n", &format!("{extra}          env:\n"));
    let (svcs, _) = parse(&[(
        "a.yaml",
        &with("          ports:\n            - containerPort: 9000\n              name: h2c\n          readinessProbe:\n            httpGet:\n              path: /healthz\n"),
    )], &autoscaler::Config::default())
    .unwrap();
    let r = &svcs[0].revisions[0];
    assert_eq!((r.container_port, r.protocol), (9000, Protocol::H2c));
    assert_eq!(
        r.readiness_probe.as_ref().unwrap()["httpGet"]["path"],
        "/healthz"
    );
    let cases = [
        (
            "          ports:\n            - containerPort: 8012\n",
            "8012 is reserved",
        ),
        (
            "          ports:\n            - containerPort: 70000\n",
            "70000 is not a port",
        ),
        (
            "          ports:\n            - name: grpc\n",
            "must be \"http1\" or \"h2c\"",
        ),
        (
            "          readinessProbe:\n            httpGet:\n              port: admin\n",
            "probe port must match container port (named \"http\")",
        ),
        (
            "          readinessProbe:\n            httpGet: {}\n            tcpSocket: {}\n",
            "expected exactly one handler",
        ),
    ];
    for (extra, want) in cases {
        let e = err(&[("a.yaml", &with(extra))]);
        assert!(e.contains(want), "{extra}: {e}");
    }
}

#[test]
fn unsupported_fields_warn_with_their_line() {
    let text = HELLO.replace(
        "          env:\n",
        "          livenessProbe:\n            tcpSocket: {}\n          env:\n",
    );
    let (_, warnings) = parse(&[("a.yaml", &text)], &autoscaler::Config::default()).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].at, "a.yaml:10");
    assert_eq!(
        warnings[0].field,
        "spec.template.spec.containers.livenessProbe"
    );
}

#[test]
fn queue_proxy_probe_is_rewritten_like_knatives_reconciler() {
    use serde_json::json;
    assert_eq!(
        queue_proxy_probe(None, 4000, 8080),
        json!({"tcpSocket": {"host": "127.0.0.1", "port": 4000}, "successThreshold": 1})
    );
    let p = json!({"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 2});
    assert_eq!(
        queue_proxy_probe(Some(&p), 4000, 8080),
        json!({
            "httpGet": {"path": "/ready", "port": 4000, "host": "127.0.0.1", "scheme": "HTTP"},
            "periodSeconds": 2, "timeoutSeconds": 1, "successThreshold": 1
        })
    );
    let p = json!({"exec": {"command": ["true"]}, "successThreshold": 3});
    assert_eq!(
        queue_proxy_probe(Some(&p), 4000, 8080),
        json!({"tcpSocket": {"host": "127.0.0.1", "port": 4000}, "successThreshold": 3})
    );
}

#[test]
fn bad_annotations_name_their_line() {
    let text = HELLO.replace(
        "  template:\n    spec:",
        "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/target: \"-3\"\n    spec:",
    );
    let e = err(&[("a.yaml", &text)]);
    assert!(
        e.starts_with(
            "a.yaml:9: spec.template.metadata.annotations.autoscaling.knative.dev/target:"
        ),
        "{e}"
    );
}

#[test]
fn the_examples_parse() {
    let cfg = autoscaler::Config::default();
    let files = [
        (
            "helloworld.yaml",
            include_str!("../../../../examples/helloworld.yaml"),
        ),
        (
            "autoscale.yaml",
            include_str!("../../../../examples/autoscale.yaml"),
        ),
        (
            "traffic-split.yaml",
            include_str!("../../../../examples/traffic-split.yaml"),
        ),
        (
            "hello-image/service.yaml",
            include_str!("../../../../examples/hello-image/service.yaml"),
        ),
    ];
    let (svcs, warnings) = parse(&files, &cfg).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let names: Vec<&str> = svcs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["helloworld", "autoscale", "hello", "hello-image"]);
    assert_eq!(svcs[2].revisions.len(), 2);
    assert_eq!(svcs[2].traffic.len(), 2);
}

#[test]
fn knative_limits_on_concurrency_and_timeouts() {
    let with = |line: &str| {
        HELLO.replace(
            "    spec:\n      containers:",
            &format!("    spec:\n      {line}\n      containers:"),
        )
    };
    for (line, want) in [
        (
            "containerConcurrency: 1001",
            "spec.template.spec.containerConcurrency: expected 0 <= 1001 <= 1000",
        ),
        (
            "timeoutSeconds: 601",
            "spec.template.spec.timeoutSeconds: expected 0 <= 601 <= 600",
        ),
        (
            "timeoutSeconds: 0",
            "spec.template.spec.timeoutSeconds: must be greater than 0",
        ),
        (
            "idleTimeoutSeconds: 700",
            "spec.template.spec.idleTimeoutSeconds: expected 0 <= 700 <= 600",
        ),
    ] {
        let e = err(&[("a.yaml", &with(line))]);
        assert!(e.starts_with("a.yaml:8: "), "{e}");
        assert!(e.contains(want), "{line}: {e}");
    }
    let (svcs, _) = parse(
        &[("a.yaml", &with("containerConcurrency: 1000"))],
        &autoscaler::Config::default(),
    )
    .unwrap();
    assert_eq!(svcs[0].revisions[0].container_concurrency, 1000);
}

/// Issue 16 item 1: an entry without `revisionName` defaults to `latestRevision: true`
/// (Knative's route_defaults.go), with a tag alone or with a percent.
#[test]
fn traffic_entry_without_revision_name_follows_the_latest() {
    let second = HELLO.replace("value: blue", "value: green").replace(
        "  template:\n",
        "  traffic:\n    - revisionName: hello-00001\n      percent: 100\n    - tag: latest\n  template:\n",
    );
    let text = format!("{HELLO}---\n{second}");
    let (svcs, _) = parse(&[("a.yaml", &text)], &autoscaler::Config::default()).unwrap();
    assert_eq!(
        svcs[0].traffic[1],
        Target {
            revision: "hello-00002".into(),
            percent: 0,
            tag: Some("latest".into()),
            latest: true,
        }
    );
    let only_percent = HELLO.replace(
        "  template:\n",
        "  traffic:\n    - percent: 100\n  template:\n",
    );
    let (svcs, _) = parse(&[("a.yaml", &only_percent)], &autoscaler::Config::default()).unwrap();
    assert_eq!(svcs[0].traffic[0].revision, "hello-00001");
    assert!(svcs[0].traffic[0].latest);
}

/// Issue 16 item 2 (test/e2e/rollback_byo_test.go TestRollbackBYOName): byo-foo, then
/// byo-foo-new, then the first document again: no new revision, byo-foo is the latest again and
/// takes the traffic. A changed template under an existing name is still an error.
#[test]
fn rolling_back_to_an_earlier_named_template_reuses_its_revision() {
    let named = |rev: &str, target: &str| {
        HELLO
            .replace(
                "  template:\n    spec:",
                &format!("  traffic:\n    - revisionName: {rev}\n      percent: 100\n  template:\n    metadata:\n      name: {rev}\n    spec:"),
            )
            .replace("value: blue", &format!("value: {target}"))
    };
    let old = named("hello-byo-foo", "old");
    let new = named("hello-byo-foo-new", "new");
    let text = format!(
        "{old}---\n{new}---\n{old}---\n{}",
        HELLO.replace("value: blue", "value: five")
    );
    let (svcs, _) = parse(&[("a.yaml", &text)], &autoscaler::Config::default()).unwrap();
    let names: Vec<&str> = svcs[0].revisions.iter().map(|r| r.name.as_str()).collect();
    // The fourth document is generation 4 (Knative numbers by generation, not by count).
    assert_eq!(names, ["hello-byo-foo-new", "hello-byo-foo", "hello-00004"]);
    let text = format!("{old}---\n{new}---\n{old}");
    let (svcs, _) = parse(&[("a.yaml", &text)], &autoscaler::Config::default()).unwrap();
    let names: Vec<&str> = svcs[0].revisions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["hello-byo-foo-new", "hello-byo-foo"]);
    assert_eq!(svcs[0].traffic[0].revision, "hello-byo-foo");
    assert_eq!(svcs[0].traffic[0].percent, 100);
    let changed = format!("{old}---\n{}", named("hello-byo-foo", "changed"));
    let e = err(&[("a.yaml", &changed)]);
    assert!(e.contains("declared twice with different templates"), "{e}");
}

/// Issue 16 item 5 (test/e2e/readiness_test.go TestReadinessAlternatePort): a numeric probe port
/// other than the container port is accepted and probed as written; a named port must be the
/// container port's name.
#[test]
fn readiness_probe_on_another_numeric_port_is_probed_there() {
    let with = |extra: &str| HELLO.replace("          env:\n", &format!("{extra}          env:\n"));
    let (svcs, warnings) = parse(
        &[(
            "a.yaml",
            &with("          readinessProbe:\n            httpGet:\n              port: 8077\n              path: /readiness\n"),
        )],
        &autoscaler::Config::default(),
    )
    .unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.message.contains("probe port 8077")),
        "{warnings:?}"
    );
    let r = &svcs[0].revisions[0];
    let qp = queue_proxy_probe(r.readiness_probe.as_ref(), 40000, r.container_port);
    assert_eq!(qp["httpGet"]["port"], 8077);
    // The container port itself (and no port) is the pod's own PORT.
    let (svcs, _) = parse(
        &[(
            "a.yaml",
            &with("          readinessProbe:\n            tcpSocket:\n              port: 8080\n"),
        )],
        &autoscaler::Config::default(),
    )
    .unwrap();
    let r = &svcs[0].revisions[0];
    let qp = queue_proxy_probe(r.readiness_probe.as_ref(), 40000, r.container_port);
    assert_eq!(qp["tcpSocket"]["port"], 40000);
    // Named ports: the port's name, or `http` when it has none.
    for (ports, port) in [
        ("", "http"),
        ("          ports:\n            - name: h2c\n", "h2c"),
    ] {
        let text = with(&format!(
            "{ports}          readinessProbe:\n            httpGet:\n              port: {port}\n"
        ));
        parse(&[("a.yaml", &text)], &autoscaler::Config::default()).unwrap();
    }
}
