//! The expression parser and evaluator: any text either fails with a
//! positioned error or parses; a parsed expression prints to text that
//! parses again, and evaluates against two small ads without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policies::expr::{eval_at, parse};
use policies::{Ad, Expr};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(e) = parse(src) else {
        return;
    };
    let printed = e.to_string();
    let again: Expr = parse(&printed).unwrap_or_else(|err| {
        panic!("{src:?} printed as {printed:?}, which does not parse: {err}")
    });
    assert_eq!(
        again.to_string(),
        printed,
        "printing is not stable for {src:?}"
    );
    let mut my = Ad::new();
    my.set("Memory", 2048i64);
    my.set("OpSys", "LINUX");
    my.set("LoadAvg", 0.25f64);
    my.insert("Self", e.clone());
    let mut target = Ad::new();
    target.set("RequestMemory", 1024i64);
    target.set("Owner", "alice");
    let _ = eval_at(&e, &my, &target, 1_700_000_000);
});
