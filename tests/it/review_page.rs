//! The dashboard's Review page (issue 13) in headless Chromium, against the real daemon, ssh
//! and sshd: a session with a flagged command typed at a pty, its user refused signing it
//! off from the page, a reviewer's queue, the command timeline and the flag seeking the
//! player, a verdict without the CSRF token refused, the verdict signed, the queue emptied
//! and the audit chain holding it.

use std::io::Write;
use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::json;

use crate::dashboard::{
    click, in_browser, link, screenshot, text_of, try_text, type_into, wait_text,
};
use crate::review::guarded;
use crate::rig::{rig, Rig};
use crate::support::run_ok;
use crate::support::SpawnPiped;
use crate::{ALICE, BOB};

/// alice's shell on db-1 under `guarded/work` (reviewed by sre-lead): a line, then `rm -rf`
/// typed with a correction (flagged), then another line well after it. Returns the
/// session's id once it has ended.
fn flagged_session(rig: &Rig) -> String {
    guarded(rig);
    let mut child = rig.ssh(ALICE, "readonly@db-1", &["-tt"]).spawn_piped();
    {
        let stdin = child.stdin.as_mut().unwrap();
        stdin.write_all(b"echo before-the-rm\r").unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        stdin
            .write_all(b"rm -rx\x7ff /tmp/ramp-nothing-here-$$\r")
            .unwrap();
        std::thread::sleep(Duration::from_millis(2000));
        stdin.write_all(b"echo after-the-rm\r").unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        stdin.write_all(b"exit\r").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let list = rig.wait_sessions("the shell ended with its flag", |l| {
        l.len() == 1
            && l[0]["state"] == "ended"
            && l[0]["flags"].as_array().is_some_and(|f| f.len() == 1)
    });
    list[0]["id"].as_str().unwrap().to_string()
}

/// Where the player is (ms) and whether it plays.
async fn position(c: &Client) -> (f64, bool) {
    let out = c
        .execute("return [player.at, player.playing]", vec![])
        .await
        .unwrap();
    (out[0].as_f64().unwrap(), out[1].as_bool().unwrap())
}

/// A POST of a verdict on `id` with the browser's session cookie, and the CSRF token when
/// `csrf` is given: its status and body.
async fn post_verdict(c: &Client, base: &str, id: &str, csrf: Option<&str>) -> (u16, String) {
    let cookie = c.get_named_cookie("ramp_session").await.unwrap();
    let mut post = reqwest::Client::new()
        .post(format!("{base}/ui/api/reviews/{id}"))
        .header("cookie", format!("ramp_session={}", cookie.value()))
        .json(&json!({"verdict": "ok", "note": "forged"}));
    if let Some(token) = csrf {
        post = post.header("x-ramp-csrf", token);
    }
    let resp = post.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The page's answer to a GET of `path` with the browser's session cookie.
async fn get_json(c: &Client, base: &str, path: &str) -> (u16, serde_json::Value) {
    let cookie = c.get_named_cookie("ramp_session").await.unwrap();
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("cookie", format!("ramp_session={}", cookie.value()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

#[test]
fn a_reviewer_signs_off_a_flagged_session_from_the_review_page_and_its_user_cannot() {
    let rig = rig();
    let id = flagged_session(&rig);
    in_browser(|c| async move {
        let base = rig.daemon.url.clone();

        // alice (sre) reviews nothing: no Review tab, and the route gives her no queue.
        c.goto(&link(&rig, ALICE)).await.unwrap();
        wait_text(&c, "#me", "alice logged in", |t| t.contains("alice")).await;
        let tab = c
            .find(Locator::Css("nav a[data-view=review]"))
            .await
            .unwrap();
        assert!(
            !tab.is_displayed().await.unwrap(),
            "the Review tab shown to alice"
        );
        let (status, queue) = get_json(&c, &base, "/ui/api/reviews").await;
        assert_eq!((status, queue), (200, json!([])));
        // Nobody logged in gets nothing, and signs nothing.
        let anon = reqwest::get(format!("{base}/ui/api/reviews"))
            .await
            .unwrap();
        assert_eq!(anon.status(), 401);
        let anon = reqwest::Client::new()
            .post(format!("{base}/ui/api/reviews/{id}"))
            .json(&json!({"verdict": "ok", "note": "drive-by"}))
            .send()
            .await
            .unwrap();
        assert_eq!(anon.status(), 401);
        // Her own session, opened by its link: the page asks, the service refuses.
        c.goto(&format!("{base}/ui/#review/{id}")).await.unwrap();
        wait_text(&c, "#timeline", "her timeline", |t| t.contains("rm -rf")).await;
        click(&c, "#verdict input[value=ok]").await;
        type_into(&c, "#verdict-note", "looks fine to me").await;
        click(&c, "#verdict button[type=submit]").await;
        let refused = wait_text(&c, "#verdict-said", "the refusal", |t| {
            t.contains("Refused")
        })
        .await;
        assert!(
            refused.contains(&format!(
                "session {id} is your own: someone else must review it"
            )),
            "{refused}"
        );
        screenshot(&c, "review-0-own-refused").await;
        click(&c, "#player-close").await;

        // bob (sre-lead): the tab, its badge, the queue with the flag.
        c.goto(&link(&rig, BOB)).await.unwrap();
        wait_text(&c, "#me", "bob logged in", |t| t.contains("bob")).await;
        wait_text(&c, "#n-review", "the Review badge", |t| t == "1").await;
        click(&c, "nav a[data-view=review]").await;
        let row = format!("#reviews tr[data-session=\"{id}\"]");
        let shown = wait_text(&c, &row, "the queue entry", |t| t.contains("alice")).await;
        for part in ["guarded", "work", "readonly@db-1", "shell", "rm-rf"] {
            assert!(shown.contains(part), "{part} not in the entry: {shown}");
        }
        assert_eq!(text_of(&c, &format!("{row} td.flags .tag")).await, "1");
        let due = text_of(&c, &format!("{row} td[data-label=due]")).await;
        assert!(due.contains('Z') && !due.contains("overdue"), "{due}");
        screenshot(&c, "review-1-queue").await;

        // A verdict without the page's CSRF token is refused, and changes nothing.
        let (status, body) = post_verdict(&c, &base, &id, None).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("CSRF"), "{body}");
        let (_, queue) = get_json(&c, &base, "/ui/api/reviews").await;
        assert_eq!(queue.as_array().unwrap().len(), 1, "{queue:#}");

        // Opened: the player, the flag, the timeline.
        click(&c, &format!("{row} button[data-act=review-open]")).await;
        let timeline = wait_text(&c, "#timeline", "the timeline", |t| {
            t.contains("after-the-rm")
        })
        .await;
        for line in [
            "echo before-the-rm",
            "rm -rf /tmp/ramp-nothing-here-$$",
            "flagged by rm-rf",
        ] {
            assert!(
                timeline.contains(line),
                "{line} not in the timeline: {timeline}"
            );
        }
        let flags = text_of(&c, "#flag-list").await;
        assert!(
            flags.contains("rm-rf") && flags.contains("jump to flag"),
            "{flags}"
        );
        assert!(text_of(&c, "#review-state")
            .await
            .contains("Waiting for a review by sre-lead"));
        // The same timeline as the command line's.
        for e in show(&rig, &id, &["--commands"]).as_array().unwrap() {
            let line = e["line"].as_str().unwrap();
            assert!(
                timeline.contains(line),
                "{line} not on the page: {timeline}"
            );
        }
        let flag_at = show(&rig, &id, &[])["flags"][0]["at_ms"].as_f64().unwrap();

        // Back to the start, paused: the rm is not on the screen yet.
        c.execute("setPlaying(false); seek(0);", vec![])
            .await
            .unwrap();
        assert!(!text_of(&c, "#screen").await.contains("rm -rf"));
        // Jump to the flag: the player is at it, paused, and the screen shows the command
        // but not what came two seconds later.
        click(&c, "#flag-list button[data-jump]").await;
        let (at, playing) = position(&c).await;
        assert!(!playing, "a jump pauses");
        assert!(
            at >= flag_at && at < flag_at + 1000.0,
            "at {at} ms, the flag at {flag_at}"
        );
        let screen = text_of(&c, "#screen").await;
        assert!(
            screen.contains("rm -rf /tmp/ramp-nothing-here") && !screen.contains("after-the-rm"),
            "{screen}"
        );
        assert!(text_of(&c, "#timeline li.now").await.contains("rm"));
        assert_eq!(text_of(&c, "#play").await, "Play");
        screenshot(&c, "review-2-flag").await;
        // A timeline entry later on: the screen moves on to it.
        let entries = c
            .find_all(Locator::Css("#timeline li.tl-typed"))
            .await
            .unwrap();
        let mut after = None;
        for e in entries {
            if e.text().await.unwrap().contains("after-the-rm") {
                after = Some(e);
            }
        }
        let after = after.expect("the later line in the timeline");
        let after_at: f64 = after
            .attr("data-jump")
            .await
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        after.click().await.unwrap();
        let (at, _) = position(&c).await;
        assert!(
            at >= after_at && at > flag_at + 1000.0,
            "at {at}, entry at {after_at}"
        );
        wait_text(&c, "#screen", "the screen at the later line", |t| {
            t.contains("after-the-rm")
        })
        .await;

        // The verdict: ok with a note; the entry leaves the queue.
        click(&c, "#verdict input[value=ok]").await;
        type_into(&c, "#verdict-note", "rm of a scratch path; fine").await;
        click(&c, "#verdict button[type=submit]").await;
        wait_text(&c, "#verdict-said", "the sign-off", |t| {
            t.contains("Signed off: ok")
        })
        .await;
        wait_text(&c, "#review-state", "the review in the panel", |t| {
            t.contains("Reviewed ok by bob")
        })
        .await;
        screenshot(&c, "review-3-signed").await;
        click(&c, "#player-close").await;
        wait_text(&c, "#reviews-empty", "the queue empties", |t| {
            t.contains("Nothing waits")
        })
        .await;
        assert!(
            try_text(&c, &row).await.is_none(),
            "the signed entry is still listed"
        );
        let records = rig.audited("session-review");
        assert_eq!(records.len(), 1, "{records:#?}");
        assert_eq!(records[0]["actor"], "bob");
        assert_eq!(records[0]["subject"], id.as_str());
        assert_eq!(records[0]["detail"]["verdict"], "ok");
        assert_eq!(records[0]["detail"]["note"], "rm of a scratch path; fine");

        // The recordings page's playback has the same timeline, and says the review.
        c.goto(&format!("{base}/ui/#recordings")).await.unwrap();
        click(
            &c,
            &format!("#recs tr[data-session=\"{id}\"] button[data-act=play]"),
        )
        .await;
        wait_text(&c, "#timeline", "the timeline in playback", |t| {
            t.contains("rm -rf")
        })
        .await;
        assert!(text_of(&c, "#review-state")
            .await
            .contains("Reviewed ok by bob"));
        let form = c.find(Locator::Css("#verdict")).await.unwrap();
        assert!(
            !form.is_displayed().await.unwrap(),
            "no verdict form outside the Review page"
        );
        c.close().await.unwrap();
    });
}

/// `sessions show ID --json ARGS` as bob runs it.
fn show(rig: &Rig, id: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sessions", "show", id, "--json"];
    all.extend_from_slice(args);
    crate::json(&run_ok(&mut rig.ramp(BOB, &all)))
}
