// The chat room client of the book's chapter 4 ("Socket.IO Real-time Web Application
// Development", 2013): two namespaces from io.connect, join_room once connected, messages sent
// with chatCom.send(JSON.stringify(...)) and read with chatCom.on('message', ...) as JSON
// strings. Written with DOM calls instead of the book's jQuery (no external assets here), and
// with textContent where the book concatenated HTML; the Socket.IO calls are the book's.
var chatInfra = io.connect('/chat_infra'),
    chatCom = io.connect('/chat_com');

var roomName = decodeURI(
    (RegExp("room" + '=' + '(.+?)(&|$)').exec(location.search) || [, null])[1]);

function append(type, name, text) {
  var line = document.createElement('div');
  line.className = type;
  if (name) {
    var who = document.createElement('span');
    who.className = 'name';
    who.textContent = name + ':';
    line.appendChild(who);
    line.appendChild(document.createTextNode(' '));
  }
  line.appendChild(document.createTextNode(text));
  document.getElementById('messages').appendChild(line);
}

if (roomName) {
  chatInfra.on('connect', function () {
    chatInfra.emit('join_room', { 'name': roomName });
  });

  chatInfra.on('name_set', function (data) {
    append('systemMessage', '', 'Hello ' + data.name);
  });

  chatInfra.on('user_entered', function (user) {
    append('systemMessage', '', user.name + ' has joined the room.');
  });

  chatInfra.on('message', function (message) {
    message = JSON.parse(message);
    append(message.type, '', message.message);
  });

  chatCom.on('message', function (message) {
    message = JSON.parse(message);
    append(message.type, message.username || '', message.message);
  });

  document.getElementById('send').onclick = function () {
    var data = {
      message: document.getElementById('message').value,
      type: 'userMessage'
    };
    chatCom.send(JSON.stringify(data));
    document.getElementById('message').value = '';
  };
}
