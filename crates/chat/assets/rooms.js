// The rooms page: keeps the user counts live with `get_rooms` on /chat_infra.
(function () {
  "use strict";
  var list = document.getElementById("rooms");
  var infra = io("/chat_infra");

  function render(rooms) {
    list.textContent = "";
    Object.keys(rooms).sort().forEach(function (room) {
      var count = rooms[room];
      var item = document.createElement("li");
      item.dataset.room = room;
      var name = document.createElement("span");
      name.className = "room-name";
      name.textContent = room;
      var users = document.createElement("span");
      users.className = "count";
      users.textContent = "[ " + count + (count === 1 ? " User ]" : " Users ]");
      var join = document.createElement("a");
      join.href = "/chatroom?room=" + encodeURIComponent(room);
      join.textContent = "Join";
      item.append(name, " ", users, " ", join);
      list.appendChild(item);
    });
  }

  infra.on("rooms_list", render);
  infra.on("connect", function () { infra.emit("get_rooms"); });
  setInterval(function () { if (infra.connected) infra.emit("get_rooms"); }, 3000);
})();
