//! Fuzz-style property tests: no text makes the job-file, submit-file,
//! policy-file or ad parsers panic, and whatever parses also expands.

use policies::ad::Ad;
use policies::jobfile;
use policies::policy::OwnerPolicy;
use proptest::prelude::*;
use std::path::Path;

/// Lines built from the pieces these formats are made of, so that many
/// inputs get past the first line.
fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("executable"),
        Just("arguments"),
        Just("input"),
        Just("output"),
        Just("error"),
        Just("log"),
        Just("initialdir"),
        Just("environment"),
        Just("requirements"),
        Just("rank"),
        Just("request_cpus"),
        Just("request_memory"),
        Just("request_disk"),
        Just("checkpoint_interval"),
        Just("max_retries"),
        Just("notification"),
        Just("transfer_executable"),
        Just("queue"),
        Just("+Attr"),
        Just("[attributes]"),
        Just("[[queue]]"),
        Just("start"),
        Just("universe"),
        Just("x"),
    ];
    let value = prop_oneof![
        Just("\"a\"".to_string()),
        Just("'$(Process)'".to_string()),
        Just("3".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("true".to_string()),
        Just("[\"a\", {x = 1}]".to_string()),
        Just("{ A = \"1\" }".to_string()),
        Just("\"2 GB\"".to_string()),
        Just("\"../x\"".to_string()),
        Just("\"/etc/passwd\"".to_string()),
        Just("(a b\\".to_string()),
        Just("x from (a, b)".to_string()),
        "\\PC{0,12}".prop_map(|s| s),
    ];
    (
        key,
        prop_oneof![Just(" = "), Just("="), Just(" "), Just("")],
        value,
    )
        .prop_map(|(k, sep, v)| format!("{k}{sep}{v}"))
}

fn file() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..8).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn job_files_never_panic(text in file()) {
        let cwd = Path::new("/home/u/w");
        for name in ["job.toml", "job.sub"] {
            if let Ok(d) = jobfile::parse_any(name, &text, cwd) {
                // A description that exists expands.
                prop_assert!(d.expand_full(1).is_ok(), "{name}:\n{text}");
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        let cwd = Path::new("/home/u/w");
        let _ = jobfile::parse_any("job.toml", &text, cwd);
        let _ = jobfile::parse_any("job.sub", &text, cwd);
        let _ = OwnerPolicy::parse("policy.toml", &text);
        let _ = Ad::parse("m.ad", &text);
    }

    #[test]
    fn policy_and_ad_files_never_panic(text in file()) {
        let _ = OwnerPolicy::parse("policy.toml", &text);
        if let Ok(ad) = Ad::parse("m.ad", &text) {
            // An ad prints as text that reads back as the same ad.
            prop_assert_eq!(Ad::parse("m.ad", &ad.to_string()).ok(), Some(ad));
        }
    }
}
