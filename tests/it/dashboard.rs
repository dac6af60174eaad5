//! The web dashboard in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`), against the real daemon and a real sshd target on loopback. Each page is
//! screenshotted to `target/dashboard-screenshots/` for people to look at.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::rig::{rig, Rig};
use crate::support::{free_port, run_ok};
use crate::{json, ALICE, BOB, CAROL};

/// chromedriver on a loopback port, killed on drop.
pub(crate) struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    pub(crate) fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (scripts/install-deps installs chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `test` with a fresh headless browser of the usual size, chromedriver started for it
/// and stopped after.
pub(crate) fn in_browser<F: std::future::Future<Output = ()>>(test: impl FnOnce(Client) -> F) {
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = browser(&driver).await;
        test(c).await;
    });
}

pub(crate) async fn browser(driver: &Driver) -> Client {
    browser_sized(driver, 1440, 900).await
}

/// A browser whose window is `width` x `height` CSS pixels (400 wide: a phone).
async fn browser_sized(driver: &Driver, width: u32, height: u32) -> Client {
    browser_with(driver, width, height, &[]).await
}

/// [`browser_sized`] with `extra` Chromium flags after the usual ones.
async fn browser_with(driver: &Driver, width: u32, height: u32, extra: &[String]) -> Client {
    let mut args = vec![
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        format!("--window-size={width},{height}"),
        "--force-device-scale-factor=1".into(),
    ];
    args.extend_from_slice(extra);
    let caps = json!({
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": args,
        }
    });
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps.as_object().unwrap().clone())
        .connect(&driver.url)
        .await
        .expect("connect to chromedriver")
}

fn shots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(crate) async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element matching `css`, or None while there is none (or it was
/// replaced between finding and reading it); any other WebDriver error fails the test.
pub(crate) async fn try_text(c: &Client, css: &str) -> Option<String> {
    let transient =
        |e: &fantoccini::error::CmdError| e.is_no_such_element() || e.is_stale_element_reference();
    match c.find(Locator::Css(css)).await {
        Ok(e) => match e.text().await {
            Ok(t) => Some(t),
            Err(e) if transient(&e) => None,
            Err(e) => panic!("reading `{css}`: {e}"),
        },
        Err(e) if transient(&e) => None,
        Err(e) => panic!("finding `{css}`: {e}"),
    }
}

/// The text of the first element matching `css`; fails the test when there is none.
pub(crate) async fn text_of(c: &Client, css: &str) -> String {
    match try_text(c, css).await {
        Some(t) => t,
        None => panic!(
            "no `{css}` on the page:\n{}",
            try_text(c, "body").await.unwrap_or_default()
        ),
    }
}

/// Waits (bounded) until the element `css` exists with text for which `ok` holds; returns it.
pub(crate) async fn wait_text(
    c: &Client,
    css: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    // Generous: the machine may be busy with other tests.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = try_text(c, css).await;
        if let Some(t) = t.as_deref().filter(|t| ok(t)) {
            return t.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: `{css}` reads {t:?}\npage:\n{}",
            try_text(c, "body").await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Seconds left in a countdown like `29m 58s` or `1h 02m 03s`.
fn countdown(text: &str) -> u64 {
    text.split_whitespace()
        .map(|part| {
            let unit = match part.chars().last() {
                Some('h') => 3600,
                Some('m') => 60,
                Some('s') => 1,
                _ => panic!("not a countdown: {text:?}"),
            };
            let n: u64 = part[..part.len() - 1]
                .parse()
                .unwrap_or_else(|e| panic!("not a countdown ({e}): {text:?}"));
            n * unit
        })
        .sum()
}

/// Types `text` into `css`, finding it again when a live update redrew it first (the page
/// keeps what was typed across redraws).
pub(crate) async fn type_into(c: &Client, css: &str, text: &str) {
    for attempt in 0.. {
        let found = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"));
        match found.send_keys(text).await {
            Ok(_) => return,
            Err(e) if attempt < 5 && e.to_string().contains("stale element") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot type into `{css}`: {e}"),
        }
    }
}

/// Clicks `css`, finding it again when a live update redrew it between finding and clicking.
pub(crate) async fn click(c: &Client, css: &str) {
    for attempt in 0.. {
        let found = c
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"));
        match found.click().await {
            Ok(_) => return,
            Err(e) if attempt < 5 && e.to_string().contains("stale element") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot click `{css}`: {e}"),
        }
    }
}

/// A fresh login link for `key`'s owner.
pub(crate) fn link(rig: &Rig, key: &str) -> String {
    let out = json(&run_ok(&mut rig.daemon.cmd(
        &rig.dir,
        key,
        &["dashboard", "--json"],
    )));
    out["url"].as_str().unwrap().to_string()
}

#[test]
fn the_dashboard_logs_in_by_link_shows_live_access_and_acts_like_the_command_line() {
    let rig = rig();
    in_browser(|c| async move {
        let base = rig.daemon.url.clone();

        // No anonymous access: the page asks for a link, the data routes say 401.
        c.goto(&format!("{base}/ui/")).await.unwrap();
        wait_text(&c, "#login", "login notice", |t| {
            t.contains("ramp-ca dashboard")
        })
        .await;
        let anon = reqwest::get(format!("{base}/ui/api/state")).await.unwrap();
        assert_eq!(anon.status(), 401);
        // Logged out, the page offers no navigation (issue 12).
        let nav = c.find(Locator::Css("nav")).await.unwrap();
        assert!(
            !nav.is_displayed().await.unwrap(),
            "navigation shown to nobody"
        );

        // bob (sre-lead, auditor) logs in through a one-time link.
        let bob_link = link(&rig, BOB);
        c.goto(&bob_link).await.unwrap();
        wait_text(&c, "#me", "bob logged in", |t| t.contains("bob")).await;
        // The link is spent.
        let again = reqwest::get(&bob_link).await.unwrap();
        assert_eq!(again.status(), 401);
        // Opened again by bob, logged in already, it goes to the dashboard; so does the
        // server's root (issue 12).
        c.goto(&bob_link).await.unwrap();
        wait_text(&c, "#me", "bob still logged in", |t| t.contains("bob")).await;
        c.goto(&format!("{base}/")).await.unwrap();
        wait_text(&c, "#me", "the root leads to the dashboard", |t| {
            t.contains("bob")
        })
        .await;
        assert!(c.current_url().await.unwrap().as_str().ends_with("/ui/"));
        assert!(c
            .find(Locator::Css("nav"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap());

        // alice takes the first step: her grant appears without a reload, and its
        // countdown moves.
        rig.observe("INC-50 dashboard", &[]);
        let row = "#active tbody tr .left";
        let first = wait_text(&c, row, "alice's grant", |t| t.contains('m')).await;
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let later = text_of(&c, row).await;
        let (from, to) = (countdown(&first), countdown(&later));
        assert!(
            to < from && to + 60 > from,
            "the countdown should move down: {first:?}, then {later:?}"
        );
        assert!(text_of(&c, "#active").await.contains("alice"));
        screenshot(&c, "1-access").await;

        // alice asks for the next step; bob approves from the page; the grant turns active.
        let pending = json(&run_ok(&mut rig.daemon.cmd(
            &rig.dir,
            ALICE,
            &crate::ask("operate", "INC-50 fix index"),
        )));
        let id = pending["grant"]["id"].as_str().unwrap().to_string();
        let pending_row = format!("#pending tr[data-grant=\"{id}\"]");
        wait_text(&c, &pending_row, "the pending request", |t| {
            t.contains("INC-50 fix index")
        })
        .await;
        screenshot(&c, "2-pending").await;
        click(&c, &format!("{pending_row} button[data-act=approve]")).await;
        let active_row = format!("#active tr[data-grant=\"{id}\"]");
        wait_text(&c, &active_row, "the approved grant", |t| {
            t.contains("operate")
        })
        .await;
        assert!(text_of(&c, "#pending-empty").await.contains("No pending"));
        let grants = run_ok(&mut rig.daemon.cmd(&rig.dir, ALICE, &["grants", "--json"]));
        assert!(
            grants.contains(&id) && grants.contains("\"active\""),
            "{grants}"
        );

        // bob is no admin: he sees no revoke button on alice's grant. carol is.
        assert!(c
            .find(Locator::Css(&format!(
                "{active_row} button[data-act=revoke]"
            )))
            .await
            .is_err());
        c.goto(&link(&rig, CAROL)).await.unwrap();
        wait_text(&c, "#me", "carol logged in", |t| t.contains("carol")).await;
        wait_text(&c, &active_row, "carol sees the grant", |t| {
            t.contains("operate")
        })
        .await;
        // Her cookie alone does not make a change: the page's CSRF token must come too.
        let cookie = c.get_named_cookie("ramp_session").await.unwrap();
        let forged = reqwest::Client::new()
            .post(format!("{base}/ui/api/grants/{id}/revoke"))
            .header("cookie", format!("ramp_session={}", cookie.value()))
            .json(&json!({"reason": "forged"}))
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403);
        click(&c, &format!("{active_row} button[data-act=revoke]")).await;
        // What it reaches is said before confirming (issue 12).
        let reach = wait_text(&c, &format!("{active_row} .cascade"), "the cascade", |t| {
            t.contains("cuts")
        })
        .await;
        assert!(reach.contains("cuts no live session"), "{reach}");
        type_into(&c, &format!("{active_row} input.reason"), "INC-50 done").await;
        click(&c, &format!("{active_row} button[data-act=revoke-confirm]")).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_text(&c, &active_row).await.is_some() {
            assert!(
                Instant::now() < deadline,
                "the revoked grant stays on the page"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Gone because it was revoked, not because the page lost its table.
        text_of(&c, "#active").await;
        let audit = run_ok(
            &mut rig
                .daemon
                .cmd(&rig.dir, CAROL, &["audit", "list", "--json"]),
        );
        assert!(
            audit.contains("INC-50 done") && audit.contains("dashboard-login"),
            "{audit}"
        );

        // A live session, followed from the page.
        let mut live = rig
            .ssh(
                ALICE,
                "readonly@db-1",
                &["for i in $(seq 1 60); do echo live-line-$i; sleep 0.25; done"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        c.goto(&format!("{base}/ui/#sessions")).await.unwrap();
        wait_text(&c, "#live tbody", "the live session", |t| {
            t.contains("alice")
        })
        .await;
        screenshot(&c, "3-live").await;
        click(&c, "#live tbody tr button[data-act=follow]").await;
        wait_text(&c, "#screen", "the followed screen", |t| {
            t.contains("live-line-4")
        })
        .await;
        screenshot(&c, "4-follow").await;
        click(&c, "#player-close").await;
        let _ = live.kill();
        let _ = live.wait();

        // A finished recording: found by its text, played, paused, sought, downloadable.
        run_ok(&mut rig.ssh(
            ALICE,
            "readonly@db-1",
            &[
                "printf",
                "'first-screen\\n'; sleep 1; printf '\\033[1;32mgreen-and-bold\\033[0m\\n'",
            ],
        ));
        c.goto(&format!("{base}/ui/#recordings")).await.unwrap();
        type_into(&c, "#search input[name=text]", "green-and-bold").await;
        // The session's last output reaches its recording within a flush (500 ms): search
        // again until it shows, as a person would.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            click(&c, "#search button").await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            // The exec command matches at once; the output once it is flushed.
            if text_of(&c, "#recs tbody")
                .await
                .contains("output green-and-bold")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the search never found the recording"
            );
        }
        screenshot(&c, "5-recordings").await;
        click(&c, "#recs tbody tr button[data-act=play]").await;
        wait_text(&c, "#screen", "playback", |t| t.contains("green-and-bold")).await;
        let html = c
            .find(Locator::Css("#screen"))
            .await
            .unwrap()
            .html(true)
            .await
            .unwrap();
        assert!(html.contains("class=\"b\""), "bold is rendered: {html}");
        // The cursor is drawn where the terminal left it: the start of the line after the
        // last output (issue 12).
        let cursor = c
            .find(Locator::Css("#screen .cursor"))
            .await
            .unwrap_or_else(|e| panic!("no cursor drawn: {e}\n{html}"))
            .attr("style")
            .await
            .unwrap()
            .unwrap_or_default();
        assert!(cursor.contains("0ch"), "cursor at column 0: {cursor}");
        screenshot(&c, "6-player").await;
        // Seek half-way, into the second between the two outputs: the first screen shows, the
        // second not yet.
        c.execute(
            "const s = document.querySelector('#seek'); s.value = Math.floor(Number(s.max) / 2); s.dispatchEvent(new Event('input'));",
            vec![],
        )
        .await
        .unwrap();
        let middle = text_of(&c, "#screen").await;
        assert!(
            middle.contains("first-screen") && !middle.contains("green-and-bold"),
            "{middle:?}"
        );
        assert_eq!(
            text_of(&c, "#play").await,
            "Play",
            "seeking after the end leaves it paused"
        );
        let href = c
            .find(Locator::Css("#player-download"))
            .await
            .unwrap()
            .attr("href")
            .await
            .unwrap()
            .unwrap();
        assert!(href.ends_with("/asciicast"), "{href}");
        click(&c, "#player-close").await;

        // Each hit says where it was (the exec command, then the output), and plays the
        // session from its time when clicked (issue 12).
        let hits = text_of(&c, "#recs tbody tr td[data-label=what]").await;
        assert!(
            hits.contains("command") && hits.contains("output"),
            "{hits}"
        );
        click(&c, "#recs tbody tr .hit:not([data-at='0'])").await;
        wait_text(&c, "#screen", "playback from the hit", |t| {
            t.contains("green-and-bold")
        })
        .await;
        let from = c.execute("return player.at", vec![]).await.unwrap();
        assert!(from.as_f64().unwrap() >= 900.0, "played from {from} ms");
        click(&c, "#player-close").await;
        // A recording changed after the fact is marked, not a reason to show nothing.
        let id = c
            .find(Locator::Css("#recs tbody tr"))
            .await
            .unwrap()
            .attr("data-session")
            .await
            .unwrap()
            .unwrap();
        let file = rig.dir.join(format!("data/recordings/{id}.rec"));
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() - 3;
        bytes[at] ^= 0x20;
        std::fs::write(&file, &bytes).unwrap();
        click(&c, "#search button").await;
        let marked = wait_text(&c, "#recs tbody", "the damaged mark", |t| {
            t.contains("damaged")
        })
        .await;
        assert!(marked.contains("not searched"), "{marked}");
        std::fs::write(&file, {
            bytes[at] ^= 0x20;
            &bytes
        })
        .unwrap();

        // The audit page with the chain's status.
        c.goto(&format!("{base}/ui/#audit")).await.unwrap();
        wait_text(&c, "#chain", "chain status", |t| t.contains("intact")).await;
        wait_text(&c, "#audit tbody", "audit rows", |t| t.contains("revoke")).await;
        screenshot(&c, "7-audit").await;

        // Logging out ends the browser session: the page asks for a link again.
        click(&c, "#logout").await;
        wait_text(&c, "#login", "logged out", |t| {
            t.contains("ramp-ca dashboard")
        })
        .await;
        c.refresh().await.unwrap();
        wait_text(&c, "#login", "still logged out", |t| {
            t.contains("ramp-ca dashboard")
        })
        .await;
        c.close().await.unwrap();
    });
}

/// A window asked for ahead on the page (issue 14): granted now, listed with a countdown to
/// its start (the bastion's refusal until then is tested in `schedule`).
#[test]
fn a_window_asked_for_ahead_on_the_page_counts_down_to_its_start() {
    let rig = rig();
    in_browser(|c| async move {
        c.goto(&link(&rig, ALICE)).await.unwrap();
        wait_text(&c, "#me", "alice logged in", |t| t.contains("alice")).await;
        click(&c, "#ask summary").await;
        wait_text(&c, "#ask-step", "the steps", |t| t.contains("observe")).await;
        type_into(&c, "#ask-reason", "CHG-12 change window").await;
        type_into(&c, "#ask-start", "+1h").await;
        click(&c, "#request button").await;
        let said = wait_text(&c, "#toast", "the answer", |t| t.contains("Granted")).await;
        assert!(said.contains("prod-db/observe from"), "{said}");
        let row = wait_text(&c, "#active tbody", "the scheduled grant", |t| {
            t.contains("opens in")
        })
        .await;
        assert!(row.contains("CHG-12 change window"), "{row}");
        let first = countdown(&text_of(&c, "#active [data-opens]").await);
        assert!((3500..=3600).contains(&first), "{first}");
        // It counts down.
        let later = wait_text(&c, "#active [data-opens]", "the countdown moving", |t| {
            countdown(t) < first
        })
        .await;
        assert!(countdown(&later) >= 3500, "{later}");
        screenshot(&c, "12-scheduled-countdown").await;
        let grants = json(&run_ok(&mut rig.ramp(ALICE, &["grants", "--json"])));
        assert_eq!(grants[0]["state"], "scheduled", "{grants:#}");
    });
}

/// How far right of the window the element `css` reaches (<= 0: it is on screen), and the
/// page's width beyond the window (0: no sideways scrolling).
async fn overflow(c: &Client, css: &str) -> (f64, f64) {
    let out = c
        .execute(
            "const e = document.querySelector(arguments[0]); const w = document.documentElement.clientWidth;
             return [e.getBoundingClientRect().right - w, document.documentElement.scrollWidth - w];",
            vec![json!(css)],
        )
        .await
        .unwrap_or_else(|e| panic!("measuring `{css}`: {e}"));
    (out[0].as_f64().unwrap(), out[1].as_f64().unwrap())
}

/// Issue 12: a pending request did not show what approving it grants, the pages did not fit a
/// phone (the header wrapped, Revoke went off-screen, the audit table was 1000 px wide), the
/// Access badge counted requests the viewer had already approved, and an approval's toast did
/// not say what happened.
#[test]
fn an_approver_on_a_phone_sees_what_a_request_grants_and_confirms_break_glass() {
    let rig = rig();
    let driver = Driver::start();
    rig.observe("INC-60", &[]);
    let operate = json(&run_ok(&mut rig.daemon.cmd(
        &rig.dir,
        ALICE,
        &crate::ask("operate", "INC-60 fix"),
    )));
    let op = operate["grant"]["id"].as_str().unwrap().to_string();
    run_ok(&mut rig.daemon.cmd(&rig.dir, CAROL, &["approve", &op]));
    let glass = json(&run_ok(&mut rig.daemon.cmd(
        &rig.dir,
        ALICE,
        &crate::ask("break-glass", "INC-60 outage"),
    )));
    let id = glass["grant"]["id"].as_str().unwrap().to_string();
    assert_eq!(glass["grant"]["break_glass"], true, "{glass}");
    // The command line's table says it too.
    let table = run_ok(&mut rig.daemon.cmd(&rig.dir, BOB, &["grants"]));
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    for part in [
        "prod-db/break-glass!",
        "root",
        "db-1,db-2,db-3",
        "pty,port forwarding",
    ] {
        assert!(row.contains(part), "{part} missing: {table}");
    }
    assert!(table.contains("! break-glass step"), "{table}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = browser_sized(&driver, 400, 860).await;
        c.goto(&link(&rig, BOB)).await.unwrap();
        wait_text(&c, "#me", "bob logged in", |t| t.contains("bob")).await;
        let row = format!("#pending tr[data-grant=\"{id}\"]");
        let text = wait_text(&c, &row, "the break-glass request", |t| {
            t.contains("INC-60 outage")
        })
        .await;
        for part in ["break-glass", "root", "db-1", "db-2", "port forwarding"] {
            assert!(text.contains(part), "{part} not shown: {text}");
        }
        assert_eq!(
            text_of(&c, "#n-access").await,
            "1",
            "one request waits for bob"
        );
        let (right, page) = overflow(&c, &format!("{row} button[data-act=approve]")).await;
        assert!(
            right <= 0.0 && page <= 0.0,
            "off-screen at 400 px: button {right}, page {page}"
        );
        let (right, _) = overflow(&c, "#logout").await;
        assert!(
            right <= 0.0,
            "the header pushes Log out off-screen by {right}"
        );
        screenshot(&c, "phone-1-pending").await;

        // Break-glass asks first, naming what it gives; then the toast says what happened.
        click(&c, &format!("{row} button[data-act=approve]")).await;
        let confirm = wait_text(&c, &format!("{row} .confirm"), "the confirmation", |t| {
            t.contains("Approve")
        })
        .await;
        assert!(
            confirm.contains("break-glass") && confirm.contains("root") && confirm.contains("db-1"),
            "{confirm}"
        );
        screenshot(&c, "phone-2-confirm").await;
        click(&c, &format!("{row} button[data-act=approve-confirm]")).await;
        let toast = wait_text(&c, "#toast", "the toast", |t| t.contains("Approved")).await;
        assert!(toast.contains("Approved 1 of 2: still pending"), "{toast}");
        let class = c
            .find(Locator::Css("#toast"))
            .await
            .unwrap()
            .attr("class")
            .await
            .unwrap()
            .unwrap_or_default();
        assert!(
            class.contains("info"),
            "a pending approval has its own colour: {class}"
        );
        // bob approved already: nothing waits for him now.
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_text(&c, "#n-access").await.as_deref() != Some("") {
            assert!(
                Instant::now() < deadline,
                "the badge still counts bob's approved request"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // carol's approval completes it; the active grant's Revoke stays on screen.
        c.goto(&link(&rig, CAROL)).await.unwrap();
        wait_text(&c, "#me", "carol logged in", |t| t.contains("carol")).await;
        click(&c, &format!("{row} button[data-act=approve]")).await;
        click(&c, &format!("{row} button[data-act=approve-confirm]")).await;
        let toast = wait_text(&c, "#toast", "carol's toast", |t| t.contains("holds")).await;
        assert!(
            toast.contains("alice holds prod-db/break-glass until"),
            "{toast}"
        );
        let active = format!("#active tr[data-grant=\"{id}\"]");
        wait_text(&c, &active, "the active break-glass grant", |t| {
            t.contains("root")
        })
        .await;
        let (right, page) = overflow(&c, &format!("{active} button[data-act=revoke]")).await;
        assert!(
            right <= 0.0 && page <= 0.0,
            "Revoke off-screen: {right}, page {page}"
        );
        screenshot(&c, "phone-3-active").await;
        c.goto(&format!("{}/ui/#audit", rig.daemon.url))
            .await
            .unwrap();
        wait_text(&c, "#audit tbody", "the audit page", |t| {
            t.contains("approve")
        })
        .await;
        let (_, page) = overflow(&c, "#audit").await;
        assert!(
            page <= 0.0,
            "the audit page is wider than the phone by {page} px"
        );
        screenshot(&c, "phone-4-audit").await;
    });
}

/// Over HTTPS (`serve --tls-cert`) the login link works in a real browser, and its session
/// cookie is Secure. Chromium is told to accept the server's key by its SPKI hash, the
/// narrowest exception it has (the command line's trust path is tested in tests/it/tls.rs).
#[test]
fn the_dashboard_logs_in_over_https_with_a_secure_cookie() {
    let tls = crate::tls::Tls::new();
    let daemon = tls.serve();
    let server = tls.localhost(&daemon);
    let ca = tls.ca.pem();
    let out = json(&run_ok(&mut daemon.cmd(
        &tls.dir,
        ALICE,
        &[
            "dashboard",
            "--json",
            "--server",
            &server,
            "--ca-cert",
            ca.to_str().unwrap(),
        ],
    )));
    let link = out["url"].as_str().unwrap().to_string();
    assert!(
        link.starts_with(&format!("{server}/ui/login?token=")),
        "{link}"
    );
    let pin = crate::certs::spki_sha256(&tls.cert);
    let driver = Driver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let spki = [format!("--ignore-certificate-errors-spki-list={pin}")];
        let c = browser_with(&driver, 1440, 900, &spki).await;
        c.goto(&link).await.unwrap();
        wait_text(&c, "#me", "alice logged in", |t| t.contains("alice")).await;
        let url = c.current_url().await.unwrap();
        assert_eq!(url.as_str(), format!("{server}/ui/"));
        let cookie = c.get_named_cookie("ramp_session").await.unwrap();
        assert_eq!(cookie.secure(), Some(true), "{cookie:?}");
        assert_eq!(cookie.http_only(), Some(true), "{cookie:?}");
        screenshot(&c, "8-https").await;
        c.close().await.unwrap();
    });
}

#[test]
fn on_call_ends_a_session_from_the_live_list_and_from_watch_and_its_user_reads_why() {
    let rig = rig();
    rig.observe("INC-77 slow queries", &[]);
    in_browser(|c| async move {
        let base = rig.daemon.url.clone();
        c.goto(&link(&rig, CAROL)).await.unwrap();
        wait_text(&c, "#me", "carol logged in", |t| t.contains("carol")).await;

        // From the live list: the row says which step and why, and ends with a reason.
        let first = crate::bastion::sleeper_as(&rig, "readonly@db-1");
        c.goto(&format!("{base}/ui/#sessions")).await.unwrap();
        let row = "#live tbody tr";
        let shown = wait_text(&c, row, "the live session", |t| t.contains("alice")).await;
        assert!(
            shown.contains("prod-db") && shown.contains("observe"),
            "{shown}"
        );
        assert!(shown.contains("INC-77 slow queries"), "{shown}");
        click(&c, &format!("{row} button[data-act=end]")).await;
        type_into(&c, &format!("{row} input.reason"), "runaway query, page me").await;
        screenshot(&c, "9-end-session").await;
        click(&c, &format!("{row} button[data-act=end-confirm]")).await;
        let out = first.wait_with_output().unwrap();
        let terminal = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            terminal.contains("ramp-ca: carol ended this session: runaway query, page me"),
            "{terminal}"
        );
        wait_text(&c, "#live-empty", "the list empties", |t| {
            t.contains("No live")
        })
        .await;

        // From Watch: the player's End button, and the player says why it ended.
        let second = crate::bastion::sleeper_as(&rig, "readonly@db-1");
        wait_text(&c, row, "the second session", |t| t.contains("alice")).await;
        click(&c, &format!("{row} button[data-act=follow]")).await;
        wait_text(&c, "#screen", "the followed screen", |t| {
            t.contains("started")
        })
        .await;
        click(&c, "#player-end").await;
        type_into(&c, "#player-reason", "done here").await;
        click(&c, "#player-end-confirm").await;
        let note = wait_text(&c, "#player-note", "why the session ended", |t| {
            t.contains("ended:")
        })
        .await;
        assert!(
            note.contains("carol ended this session: done here"),
            "{note}"
        );
        screenshot(&c, "10-watch-ended").await;
        let _ = second.wait_with_output();
        let stops = rig.audited("session-stop");
        assert_eq!(stops.len(), 2, "{stops:#?}");
    });
}

#[test]
fn an_engineer_requests_access_on_the_page_and_reads_only_her_own_recordings() {
    let rig = rig();
    in_browser(|c| async move {
        let base = rig.daemon.url.clone();
        c.goto(&link(&rig, ALICE)).await.unwrap();
        wait_text(&c, "#me", "alice logged in", |t| t.contains("alice")).await;

        // The form offers what she may ask for; observe is granted at once.
        click(&c, "#ask summary").await;
        let offered = wait_text(&c, "#ask-step", "the steps", |t| t.contains("observe")).await;
        assert!(
            offered.contains("operate") && offered.contains("approval"),
            "{offered}"
        );
        type_into(&c, "#ask-reason", "INC-88 from the page").await;
        click(&c, "#request button").await;
        let said = wait_text(&c, "#toast", "the answer", |t| t.contains("Granted")).await;
        assert!(
            said.contains("prod-db/observe") && said.contains("ramp-ca sign --grant"),
            "{said}"
        );
        wait_text(&c, "#active tbody", "her grant", |t| {
            t.contains("INC-88 from the page")
        })
        .await;
        let grants = json(&run_ok(&mut rig.ramp(ALICE, &["grants", "--json"])));
        assert_eq!(grants[0]["state"], "active", "{grants:#}");
        assert_eq!(grants[0]["reason"], "INC-88 from the page");

        // operate needs an approval: filed, and the toast says from whom.
        c.execute(
            "const s = document.querySelector('#ask-step'); s.value = 'operate';",
            vec![],
        )
        .await
        .unwrap();
        click(&c, "#request button").await;
        let said = wait_text(&c, "#toast", "pending", |t| t.contains("Requested")).await;
        assert!(said.contains("waiting for 1 approval"), "{said}");
        screenshot(&c, "11-request-form").await;

        // A policy refusal comes back in the policy's words.
        c.execute(
            "document.querySelector('#request input[name=ttl]').value = '9d';",
            vec![],
        )
        .await
        .unwrap();
        click(&c, "#request button").await;
        let said = wait_text(&c, "#toast", "the refusal", |t| t.contains("Refused")).await;
        assert!(said.contains("max_ttl"), "{said}");

        // Her recordings, and nobody else's (the certificate from the grant she asked for).
        rig.sign(ALICE, &["--grant", grants[0]["id"].as_str().unwrap()]);
        run_ok(&mut rig.ssh(ALICE, "readonly@db-1", &["echo", "mine-on-the-page"]));
        rig.wait_sessions("her session ended", |l| {
            l.iter().any(|s| s["state"] == "ended")
        });
        c.goto(&format!("{base}/ui/#recordings")).await.unwrap();
        let rows = wait_text(&c, "#recs tbody", "her recording", |t| t.contains("alice")).await;
        assert!(rows.contains("echo mine-on-the-page"), "{rows}");
        let theirs = c
            .execute(
                "return fetch('/ui/api/recordings?user=bob').then((r) => r.status)",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(theirs, json!(403));
    });
}
