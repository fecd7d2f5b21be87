// Connect to infinibay's Socket.IO endpoint with TOKEN, subscribe to VM_ID and print its
// first `metricsUpdate` as one JSON line. Exit 1 on any refusal or after 45 s without an
// update. Uses the official socket.io-client that the test command installs in
// tests/node/node_modules (CommonJS, so that NODE_PATH can point there).
//
//   NODE_PATH=tests/node/node_modules node e2e/socketio-probe.cjs URL TOKEN VM_ID
const { io } = require("socket.io-client");

const [url, token, vmId] = process.argv.slice(2);
if (!url || !token || !vmId) {
  console.error("usage: socketio-probe.cjs URL TOKEN VM_ID");
  process.exit(2);
}
const fail = (message) => {
  console.error(message);
  process.exit(1);
};
const timer = setTimeout(() => fail("no metricsUpdate within 45 s"), 45_000);
const socket = io(url, { auth: { token }, transports: ["websocket"], reconnection: false });
socket.on("connect_error", (error) => fail(`connect_error: ${error.message}`));
socket.on("connected", () => {
  socket.emit("subscribe:vm", vmId, (ack) => {
    if (!ack || ack.ok !== true) fail(`subscribe:vm refused: ${JSON.stringify(ack)}`);
  });
});
socket.on("metricsUpdate", (update) => {
  if (update.vmId !== vmId) return;
  console.log(JSON.stringify(update));
  clearTimeout(timer);
  socket.close();
  process.exit(0);
});
