// The chat room page: joins the room on /chat_infra, sends and shows messages on /chat_com.
// Everything users typed is inserted with textContent, never as HTML.
(function () {
  "use strict";
  var chat = document.getElementById("chat");
  var room = chat.dataset.room;
  var messages = document.getElementById("messages");
  var users = document.getElementById("users");
  var status = document.getElementById("status");
  var input = document.getElementById("message");

  // Long-polling first, then websocket (the client's default): it gets through proxies that
  // refuse websockets, and every request of a session reaches its worker (sticky routing).
  // /chat_com first, so the server knows both sockets when join_room arrives.
  var com = io("/chat_com");
  var infra = io("/chat_infra");

  function show(kind, who, text) {
    var line = document.createElement("div");
    line.className = "message " + kind;
    if (who) {
      var name = document.createElement("span");
      name.className = "who";
      name.textContent = who;
      line.appendChild(name);
    }
    var body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    line.appendChild(body);
    messages.appendChild(line);
    messages.scrollTop = messages.scrollHeight;
  }

  function showChatLine(json, fromHistory) {
    var data;
    try { data = JSON.parse(json); } catch (e) { return; }
    if (!data || typeof data.message !== "string") return;
    var kind = data.type;
    if (fromHistory && data.username === chat.dataset.nickname) kind = "myMessage";
    if (kind === "serverMessage") show("serverMessage", "", data.message);
    else if (kind === "myMessage" || kind === "userMessage") show(kind, data.username, data.message);
  }

  // The room's members: the whole list comes once, on joining; then only who enters and who
  // leaves. Changes heard before the list (another user joining at the same moment) are
  // applied again on top of it, so the list never undoes them.
  var members = Object.create(null);
  var changesBeforeList = null;

  function showMembers() {
    users.textContent = "";
    Object.keys(members).sort().forEach(function (name) {
      var item = document.createElement("li");
      item.textContent = name;
      users.appendChild(item);
    });
  }

  function change(name, present) {
    if (present) members[name] = true;
    else delete members[name];
  }

  function memberChanged(name, present) {
    if (changesBeforeList) changesBeforeList.push([name, present]);
    change(name, present);
    showMembers();
  }

  infra.on("connect", function () {
    status.textContent = "connected";
    // Back with its socket, its room and the lines it missed (connection-state recovery): the
    // page is whole, nothing to join again.
    if (infra.recovered) return;
    members = Object.create(null);
    showMembers();
    changesBeforeList = [];
    infra.emit("join_room", { name: room });
  });
  infra.on("disconnect", function () { status.textContent = "reconnecting…"; });
  infra.on("connect_error", function (err) { status.textContent = "cannot connect: " + err.message; });
  infra.on("name_set", function (data) { chat.dataset.nickname = data.name; });
  infra.on("message", function (json) { showChatLine(json, false); });
  infra.on("history", function (lines) {
    messages.textContent = "";
    lines.forEach(function (json) { showChatLine(json, true); });
  });
  infra.on("user_entered", function (data) {
    show("userEvent", "", data.name + " entered the room");
    memberChanged(data.name, true);
  });
  infra.on("user_left", function (data) {
    show("userEvent", "", data.name + " left the room");
    memberChanged(data.name, false);
  });
  infra.on("users_list", function (names) {
    members = Object.create(null);
    names.forEach(function (name) { change(name, true); });
    (changesBeforeList || []).forEach(function (pair) { change(pair[0], pair[1]); });
    changesBeforeList = null;
    showMembers();
  });
  infra.on("private_message", function (data) {
    show("privateMessage", data.from + " → " + data.to, data.message);
  });
  infra.on("error", function (data) { show("serverMessage", "", data.message); });

  com.on("message", function (json) { showChatLine(json, false); });
  com.on("error", function (data) { show("serverMessage", "", data.message); });

  document.getElementById("send-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var text = input.value;
    if (!text.trim()) return;
    com.emit("message", JSON.stringify({ type: "userMessage", message: text }));
    input.value = "";
  });
})();
