//! The pool page in a real browser: headless Chromium, driven through
//! chromedriver by fantoccini, on the submit host of a live pool. The page
//! lists the machines; when an owner touches the keyboard the machine
//! running the job shows `Suspended` without the page being reloaded;
//! clicking the job shows its event log and where it ran. A screenshot is
//! kept as a test artifact (`target/test-artifacts/pool-page.png`).

use fantoccini::{ClientBuilder, Locator};
use roost_tests::{MATCHMAKER_PORT, Pool, build_job, require, workspace};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A touch of the activity file suspends the job, which then stays
/// suspended for the rest of the test (no vacate within five minutes).
const SUSPEND_POLICY: &str = r#"start = "KeyboardIdle > 2"
suspend = "KeyboardIdle < 2"
continue = "KeyboardIdle > 600"
preempt = 'Activity == "Suspended" && CurrentTime - EnteredCurrentActivity >= 300'
kill = "CurrentTime - EnteredCurrentActivity > MaxVacateTime"
want_suspend = true
want_vacate = true
max_vacate_time = 120
"#;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const DRIVER_PORT: u16 = 9515;

fn chromium() -> PathBuf {
    // The binary itself; /usr/bin/chromium is Debian's wrapper script.
    let real = Path::new("/usr/lib/chromium/chromium");
    if real.exists() {
        real.into()
    } else {
        "/usr/bin/chromium".into()
    }
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the certificate in `pem`: the
/// browser trusts exactly this key (the pool CA is not a public one).
fn spki_pin(pem: &Path) -> String {
    use base64::Engine;
    let bytes = std::fs::read(pem).unwrap();
    let (_, p) = x509_parser::pem::parse_x509_pem(&bytes).unwrap();
    let cert = p.parse_x509().unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Kills chromedriver (and so its browser) when the test ends.
struct Driver(Child);
impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_pool_page_lists_machines_and_shows_a_suspension_live() {
    require(
        "Debian's chromium (apt-get install chromium)",
        chromium().exists(),
    );
    require(
        "chromedriver (apt-get install chromium-driver)",
        Path::new(CHROMEDRIVER).exists(),
    );
    let pool = Pool::start_with_policy(2, Some(SUSPEND_POLICY));
    let dir = pool.job_dir("watched");
    std::fs::copy(build_job("migrate.c"), dir.join("migrate")).unwrap();
    let input: String = (0..2000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(dir.join("input.txt"), input).unwrap();
    let ids = pool.submit(
        &dir,
        "executable = \"migrate\"\narguments = [\"8\", \"input.txt\", \"output.txt\", \"50\"]\n",
    );
    let id = ids[0].clone();
    let first = pool.wait_event(&id, "executing", 1, Duration::from_secs(30));
    let host = first["host"].as_str().unwrap().to_string();
    let other = if host == "exec1" { "exec2" } else { "exec1" };

    let pki = pool.dir.join("pki");
    let token = std::fs::read_to_string(pki.join("web-token")).unwrap();
    let url = format!(
        "https://{}:{MATCHMAKER_PORT}/?token={}",
        pool.host("cm").ip,
        token.trim()
    );
    let pin = spki_pin(&pki.join("cm.pem"));
    let profile = pool.dir.join("chromium-profile");
    let artifacts = workspace().join("target").join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("pool-page.png");

    // The browser runs on the submit host, like a user's.
    let pool = &pool;
    pool.in_netns("submit", || {
        let _driver = Driver(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={DRIVER_PORT}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting chromedriver"),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut caps = serde_json::Map::new();
            caps.insert(
                "goog:chromeOptions".into(),
                serde_json::json!({
                    "binary": chromium(),
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        "--disable-dev-shm-usage", "--window-size=1400,900",
                        format!("--user-data-dir={}", profile.display()),
                        format!("--ignore-certificate-errors-spki-list={pin}"),
                    ],
                }),
            );
            let driver = format!("http://127.0.0.1:{DRIVER_PORT}");
            let mut tries = 0;
            let c = loop {
                let conn = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(conn)
                    .capabilities(caps.clone())
                    .connect(&driver)
                    .await
                {
                    Ok(c) => break c,
                    Err(e) if tries < 50 => {
                        tries += 1;
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("no WebDriver session from chromedriver: {e}"),
                }
            };
            let wait = Duration::from_secs(20);
            c.goto(&url).await.expect("opening the pool page");

            // Every machine is listed; the job's machine runs it.
            let row = |m: &str| format!("tr[data-machine='{m}']");
            for m in ["exec1", "exec2"] {
                c.wait()
                    .at_most(wait)
                    .for_element(Locator::Css(&row(m)))
                    .await
                    .unwrap_or_else(|e| panic!("the page lists no {m}: {e}"));
            }
            let busy = format!(
                "//tr[@data-machine='{host}']/td[contains(@class,'activity') and text()='Busy']"
            );
            c.wait()
                .at_most(wait)
                .for_element(Locator::XPath(&busy))
                .await
                .unwrap_or_else(|e| panic!("{host} never shows Busy: {e}"));
            let job_cell = c
                .find(Locator::Css(&format!("{} td.job", row(&host))))
                .await
                .unwrap();
            assert_eq!(job_cell.text().await.unwrap(), id);
            let idle_other = c
                .find(Locator::Css(&format!("{} td.state", row(other))))
                .await
                .unwrap();
            assert_eq!(idle_other.text().await.unwrap(), "Unclaimed");

            // The owner comes back: Suspended, pushed to the same page.
            c.execute("window.notReloaded = 42; return true;", vec![])
                .await
                .unwrap();
            let updates = c.execute("return window.roostUpdates;", vec![]).await.unwrap();
            pool.touch(&host);
            let suspended = format!(
                "//tr[@data-machine='{host}']/td[contains(@class,'activity') and text()='Suspended']"
            );
            c.wait()
                .at_most(wait)
                .for_element(Locator::XPath(&suspended))
                .await
                .unwrap_or_else(|e| panic!("{host} never shows Suspended: {e}"));
            let marker = c.execute("return window.notReloaded;", vec![]).await.unwrap();
            assert_eq!(marker, serde_json::json!(42), "the page was reloaded");
            let later = c.execute("return window.roostUpdates;", vec![]).await.unwrap();
            assert!(
                later.as_u64() > updates.as_u64(),
                "no update was pushed: {updates} then {later}"
            );

            // The job's log and moves, from a click.
            // The row is redrawn by every pushed update: a link found just
            // before a redraw is stale, so it is found again.
            let link = format!("{} td.job a", row(&host));
            let mut tries = 0;
            loop {
                let clicked = match c.find(Locator::Css(&link)).await {
                    Ok(a) => a.click().await,
                    Err(e) => Err(e),
                };
                match clicked {
                    Ok(()) => break,
                    Err(e) if tries < 20 => {
                        tries += 1;
                        eprintln!("clicking the job's link: {e}; again");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("cannot click the job's link: {e}"),
                }
            }
            c.wait()
                .at_most(wait)
                .for_element(Locator::Css("#jobpanel.open"))
                .await
                .expect("the job panel opens");
            let log_has_suspended =
                "//pre[@id='joblog' and contains(text(), '\"event\":\"suspended\"')]";
            c.wait()
                .at_most(wait)
                .for_element(Locator::XPath(log_has_suspended))
                .await
                .expect("the job's log shows its suspension");
            let log = c.find(Locator::Id("joblog")).await.unwrap().text().await.unwrap();
            for ev in ["submitted", "matched", "executing", "suspended"] {
                assert!(
                    log.contains(&format!("\"event\":\"{ev}\"")),
                    "no {ev} in the job's log on the page:\n{log}"
                );
            }
            let moves = c.find(Locator::Id("moves")).await.unwrap().text().await.unwrap();
            assert!(
                moves.contains(&format!("started on {host}")),
                "moves: {moves}"
            );

            let png = c.screenshot().await.expect("a screenshot");
            std::fs::write(&shot, &png).unwrap();
            c.close().await.unwrap();
        });
    });
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
}
