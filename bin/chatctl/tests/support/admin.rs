//! What the admin address's tests share: a two-worker app with `--admin` on a port of the test
//! kit, and users chatting on it.

use super::{all_online, App, ClientScript};

/// An app of two chat workers (reporting every 500 ms) with an admin address, and `users`
/// npm socket.io-client users chatting on it (a line every 200 ms each), all of them in.
pub struct ChattingApp {
    pub app: App,
    /// HOST:PORT of the admin address.
    pub admin: String,
    pub admin_port: u16,
    pub chatter: ClientScript,
}

impl ChattingApp {
    pub fn start(name: &str, users: usize) -> ChattingApp {
        let app = App::new(name);
        let admin_port = testkit::port();
        let admin = format!("127.0.0.1:{admin_port}");
        let flags = ["-i", "2", "--admin", &admin, "--health-interval", "500ms"];
        app.start_ok(&flags, &[]);
        app.wait_listed("two online workers", |a| all_online(a, 2));
        let node = super::node_program();
        let users = users.to_string();
        let mut chatter = ClientScript::start(&node, "chatter.mjs", &[&app.url(), &users, "200"]);
        let report = chatter.next_report();
        assert_eq!(report["event"], "chatting", "{report}");
        ChattingApp {
            app,
            admin,
            admin_port,
            chatter,
        }
    }

    /// Stops the users, who must have chatted until then.
    pub fn stop_chatting(mut self) {
        self.chatter.tell("stop");
        let done = self.chatter.next_report();
        assert_eq!(done["event"], "done", "{done}");
    }
}
