//! Unit tests of `service.rs`.

use super::*;

fn reply(run_id: &str) -> pb::SessionEvents {
    pb::SessionEvents {
        run_id: run_id.to_owned(),
        ..Default::default()
    }
}

fn ids(replies: &pb::SessionReplies) -> Vec<&str> {
    replies.runs.iter().map(|r| r.run_id.as_str()).collect()
}

#[test]
fn session_replies_ready_together_leave_as_one_message_in_order() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let (tx, rx) = mpsc::channel(16);
        let mut out = Coalesced {
            rx,
            held: std::collections::VecDeque::new(),
        };
        for id in ["a", "b", "c"] {
            tx.send(Ok(reply(id))).await.unwrap();
        }
        assert_eq!(ids(&out.next().await.unwrap().unwrap()), ["a", "b", "c"]);
        // An error goes out on its own, after the replies before it and before those
        // after it.
        tx.send(Ok(reply("d"))).await.unwrap();
        tx.send(Err(Status::internal("boom"))).await.unwrap();
        tx.send(Ok(reply("e"))).await.unwrap();
        assert_eq!(ids(&out.next().await.unwrap().unwrap()), ["d"]);
        assert_eq!(out.next().await.unwrap().unwrap_err().message(), "boom");
        assert_eq!(ids(&out.next().await.unwrap().unwrap()), ["e"]);
        // Big replies are not piled into one message past the byte bound.
        let big = |id: &str| pb::SessionEvents {
            run_id: id.to_owned(),
            events: vec![pb::RunEvent {
                message: "x".repeat(SESSION_COALESCE_BYTES / 2),
                ..Default::default()
            }],
            ..Default::default()
        };
        for id in ["f", "g", "h"] {
            tx.send(Ok(big(id))).await.unwrap();
        }
        assert_eq!(ids(&out.next().await.unwrap().unwrap()), ["f"]);
        assert_eq!(ids(&out.next().await.unwrap().unwrap()), ["g"]);
        assert_eq!(ids(&out.next().await.unwrap().unwrap()), ["h"]);
        drop(tx);
        assert!(out.next().await.is_none());
    });
}
