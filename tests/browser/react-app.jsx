// The page react.test.mjs opens: a small React app on the client's hooks, in StrictMode (development
// build, so React mounts, unmounts and mounts every effect again). It mirrors what it renders into
// window.app for the test. ?user=alice&worker=http://…&channel=room:x
import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { useSwitchboard, useChannel, usePresence } from "@switchboard/client/react";

const params = new URLSearchParams(location.search);
const user = params.get("user");
const url = params.get("worker");
const channel = params.get("channel");
const app = (window.app = { messages: [], events: [] });

function Room({ client }) {
  const [messages, setMessages] = useState([]);
  const status = useChannel(client, channel, (envelope) => {
    app.messages.push(envelope.payload.text);
    setMessages((m) => [...m, envelope.payload.text]);
    return { by: user, handled: app.messages.length }; // the ack result the backend reads
  });
  const presence = usePresence(client, channel);
  app.joined = status.joined;
  app.members = [...presence.members.keys()].sort();
  app.names = [...presence.members].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, d]) => d?.name);
  app.count = presence.count;
  app.synced = presence.synced;
  app.presenceError = presence.error?.code;
  return (
    <section>
      <h2>
        {channel} {status.joined ? "(joined)" : "(joining)"} · {presence.count} here
      </h2>
      <ul id="members">
        {[...presence.members].map(([userId, data]) => (
          <li key={userId} data-user={userId}>
            {data?.name ?? userId}
          </li>
        ))}
      </ul>
      <ol id="messages">
        {messages.map((m, i) => (
          <li key={i}>{m}</li>
        ))}
      </ol>
    </section>
  );
}

function App() {
  const { client, state } = useSwitchboard({
    url,
    token: () => fetch(`/token?user=${encodeURIComponent(user)}`).then((r) => r.text()),
    // Long enough that only the wake (online / visible) can explain a quick reconnect.
    reconnect: { minDelayMs: 30000, maxDelayMs: 30000, jitter: 0 },
    tickets: true,
  });
  const [inRoom, setInRoom] = useState(true);
  app.state = state;
  app.client = client;
  app.inRoom = inRoom;
  return (
    <main>
      <p>
        {user}: <span id="state" data-state={state}>{state}</span>
      </p>
      <button id="toggle" onClick={() => setInRoom((v) => !v)}>
        {inRoom ? "Leave the room" : "Enter the room"}
      </button>
      {inRoom && <Room client={client} />}
    </main>
  );
}

createRoot(document.getElementById("root")).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
