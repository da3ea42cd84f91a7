//! Property tests: printing then parsing gives the same tree; no input
//! makes the parser or the evaluator panic.

use super::*;
use crate::ad::Ad;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,6}".prop_filter("not a keyword", |s| {
        !parse::is_reserved(s) && !s.eq_ignore_ascii_case("my") && !s.eq_ignore_ascii_case("target")
    })
}

fn literal() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite", |r| r.is_finite())
            .prop_map(Value::Real),
        "[ -~\\n\\t\u{e9}\u{4e2d}]{0,8}".prop_map(Value::Str),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Undefined),
        Just(Value::Error),
    ]
}

fn func_call(args: Vec<Expr>) -> Option<Expr> {
    let n = args.len();
    let (name, func, ..) = Func::ALL
        .iter()
        .filter(|(_, _, lo, hi)| (*lo..=*hi).contains(&n))
        .nth(n % 3)?;
    Some(Expr::Call {
        func: *func,
        name: name.to_string(),
        args,
    })
}

/// Trees in the form the parser produces: a minus sign on a number literal
/// is part of the literal, never a `Neg` node.
fn tree() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        literal().prop_map(Expr::Lit),
        (
            prop_oneof![Just(Scope::Auto), Just(Scope::My), Just(Scope::Target)],
            name()
        )
            .prop_map(|(scope, name)| Expr::Attr { scope, name }),
    ];
    leaf.prop_recursive(6, 64, 4, |inner| {
        let unop = prop_oneof![Just(UnOp::Neg), Just(UnOp::Plus), Just(UnOp::Not)];
        let binop = prop_oneof![
            Just(BinOp::Or),
            Just(BinOp::And),
            Just(BinOp::Eq),
            Just(BinOp::Ne),
            Just(BinOp::MetaEq),
            Just(BinOp::MetaNe),
            Just(BinOp::Lt),
            Just(BinOp::Le),
            Just(BinOp::Gt),
            Just(BinOp::Ge),
            Just(BinOp::Add),
            Just(BinOp::Sub),
            Just(BinOp::Mul),
            Just(BinOp::Div),
            Just(BinOp::Mod),
        ];
        prop_oneof![
            (unop, inner.clone()).prop_map(|(op, e)| match (op, e) {
                (UnOp::Neg, e @ Expr::Lit(Value::Int(_) | Value::Real(_))) => {
                    Expr::Unary(UnOp::Not, Box::new(e))
                }
                (op, e) => Expr::Unary(op, Box::new(e)),
            }),
            (binop, inner.clone(), inner.clone()).prop_map(|(op, a, b)| Expr::Binary(
                op,
                Box::new(a),
                Box::new(b)
            )),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| Expr::Cond(
                Box::new(a),
                Box::new(b),
                Box::new(c)
            )),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Expr::List),
            prop::collection::vec(inner, 0..4)
                .prop_map(|args| func_call(args).unwrap_or(Expr::List(vec![]))),
        ]
    })
}

fn sample_ads() -> (Ad, Ad) {
    let mut my = Ad::new();
    my.set("a", 3);
    my.set("b", "text");
    my.set_expr("c", "a + TARGET.a").unwrap();
    my.set_expr("d", "d").unwrap();
    let mut target = Ad::new();
    target.set("a", 2.5);
    target.set_expr("B", "MY.a * 2").unwrap();
    (my, target)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn print_then_parse_is_identity(e in tree()) {
        let printed = e.to_string();
        let back = parse(&printed);
        prop_assert_eq!(back.as_ref(), Ok(&e), "printed as {}", printed);
    }

    #[test]
    fn evaluation_never_panics(e in tree()) {
        let (my, target) = sample_ads();
        let v = eval_at(&e, &my, &target, 0);
        // A value always prints as text that parses.
        let text = v.to_string();
        if !matches!(v, Value::Real(r) if !r.is_finite()) {
            prop_assert!(parse(&text).is_ok(), "{} printed as {}", e, text);
        }
    }

    #[test]
    fn parser_never_panics_on_any_string(s in "\\PC{0,64}") {
        let _ = parse(&s);
    }

    #[test]
    fn parser_never_panics_on_token_soup(
        toks in prop::collection::vec(
            prop_oneof![
                Just("("), Just(")"), Just("{"), Just("}"), Just(","), Just("?"), Just(":"),
                Just("&&"), Just("||"), Just("!"), Just("-"), Just("+"), Just("*"), Just("/"),
                Just("%"), Just("=="), Just("=?="), Just("=!="), Just("<"), Just(">="),
                Just("is"), Just("isnt"), Just("MY."), Just("TARGET."), Just("x"), Just("1"),
                Just("2.5"), Just("\"s\""), Just("undefined"), Just("error"), Just("true"),
                Just("strcat("), Just("member("), Just("ifThenElse("), Just("size("),
                Just("."), Just("1e"), Just("\"\\"), Just("9223372036854775808"),
            ],
            0..40,
        )
    ) {
        let s = toks.join(" ");
        if let Ok(e) = parse(&s) {
            let (my, target) = sample_ads();
            let _ = eval_at(&e, &my, &target, 0);
            let back = parse(&e.to_string());
            prop_assert_eq!(back.as_ref(), Ok(&e));
        }
    }
}
