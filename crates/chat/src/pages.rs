//! The HTML pages. Everything a user typed goes through [`escape`]; page scripts get their data
//! from escaped `data-` attributes, never from inline script.

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a value for a URL query.
fn query_value(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn layout(title: &str, body: &str, script: Option<&str>) -> String {
    let script = script
        .map(|src| {
            format!(
                "<script src=\"/socket.io/socket.io.js\"></script><script src=\"{src}\"></script>"
            )
        })
        .unwrap_or_default();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/static/chat.css\"></head>\
         <body><header><a href=\"/rooms\" class=\"brand\">chatctl</a></header><main>{body}</main>{script}</body></html>",
        escape(title)
    )
}

/// `/`: the nickname form, with the error of a refused login.
pub fn landing(error: Option<&str>, nickname: &str) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Welcome to the chat</h1>{error}\
         <form method=\"post\" action=\"/login\" class=\"card\">\
         <label for=\"nickname\">Nickname</label>\
         <input id=\"nickname\" name=\"nickname\" maxlength=\"32\" required autofocus value=\"{}\">\
         <button type=\"submit\" id=\"login\">Login</button></form>",
        escape(nickname)
    );
    layout("Chat", &body, None)
}

/// `/rooms`: the rooms with their user counts, and a form to start a room.
pub fn rooms(nickname: &str, rooms: &[(String, usize)]) -> String {
    let mut list = String::new();
    for (room, count) in rooms {
        let users = if *count == 1 { "User" } else { "Users" };
        list.push_str(&format!(
            "<li data-room=\"{room_attr}\"><span class=\"room-name\">{room_text}</span> \
             <span class=\"count\">[ {count} {users} ]</span> \
             <a href=\"/chatroom?room={room_query}\">Join</a></li>",
            room_attr = escape(room),
            room_text = escape(room),
            room_query = query_value(room),
        ));
    }
    let body = format!(
        "<h1>Rooms</h1><form method=\"post\" action=\"/logout\" class=\"session\">Logged in as <strong id=\"me\">{}</strong> · \
         <button type=\"submit\" id=\"logout\" class=\"link\">Log out</button></form>\
         <ul id=\"rooms\">{list}</ul>\
         <form method=\"get\" action=\"/chatroom\" class=\"card\">\
         <label for=\"new-room\">New room</label>\
         <input id=\"new-room\" name=\"room\" maxlength=\"64\" required>\
         <button type=\"submit\" id=\"create-room\">Start room</button></form>",
        escape(nickname)
    );
    layout("Rooms", &body, Some("/static/rooms.js"))
}

/// `/chatroom?room=NAME`: the room's messages, an input and Send.
pub fn chatroom(nickname: &str, room: &str) -> String {
    let body = format!(
        "<section id=\"chat\" data-room=\"{room_attr}\" data-nickname=\"{nick_attr}\">\
         <h1>Room <span id=\"room-name\">{room_text}</span></h1>\
         <p id=\"status\" class=\"status\">connecting…</p>\
         <aside><h2>Users</h2><ul id=\"users\"></ul></aside>\
         <div id=\"messages\" aria-live=\"polite\"></div>\
         <form id=\"send-form\" class=\"composer\" autocomplete=\"off\">\
         <input id=\"message\" maxlength=\"2000\" placeholder=\"Say something\" required>\
         <button type=\"submit\" id=\"send\">Send</button></form>\
         <p><a href=\"/rooms\">Back to rooms</a></p></section>",
        room_attr = escape(room),
        nick_attr = escape(nickname),
        room_text = escape(room),
    );
    layout(
        &format!("{room} – Chat"),
        &body,
        Some("/static/chatroom.js"),
    )
}

/// A page that only says what went wrong (404, a bad room name).
pub fn message_page(title: &str, message: &str) -> String {
    let body = format!(
        "<h1>{}</h1><p>{}</p><p><a href=\"/\">Home</a></p>",
        escape(title),
        escape(message)
    );
    layout(title, &body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped_everywhere() {
        let evil = "<img src=x onerror=alert(1)>\"'&";
        for page in [
            landing(Some(evil), evil),
            rooms(evil, &[(evil.to_owned(), 2)]),
            chatroom(evil, evil),
            message_page(evil, evil),
        ] {
            assert!(!page.contains("<img"), "unescaped markup in {page}");
            assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"));
        }
    }

    #[test]
    fn rooms_page_shows_counts_and_join_links() {
        let page = rooms("ann", &[("a b".to_owned(), 2), ("solo".to_owned(), 1)]);
        assert!(page.contains("[ 2 Users ]"));
        assert!(page.contains("[ 1 User ]"));
        assert!(page.contains("href=\"/chatroom?room=a+b\""));
    }
}
