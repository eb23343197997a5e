// React hooks for the Switchboard client: `@switchboard/client/react`. React (18 or 19) is a peer
// dependency; the core client does not need it. Each hook takes what it holds in an effect and lets
// go of it in the effect's cleanup, and the client leaves a channel only one task after the last
// hold is released, so StrictMode's mount-unmount-mount costs no leave and re-join on the server.
import { useEffect, useMemo, useRef, useState } from "react";
import { SwitchboardClient, type SwitchboardError, type ClientOptions, type Envelope, type State, type PresenceChange, type ChannelSubscription, type Presence } from "./index.js";

export interface UseSwitchboard {
  /** The same client for the component's lifetime (a new one when `url` or `transport` changes). */
  client: SwitchboardClient;
  state: State;
  /** The last error the client reported (cleared when the connection opens). */
  error: SwitchboardError | undefined;
}

/**
 * Makes a client, connects it while the component is mounted and closes it on unmount. The client is
 * made again only when `url` or `transport` change; the latest `token` is used on every connection
 * attempt (a token function may change between renders). Other options are read when it is made.
 */
export function useSwitchboard(options: ClientOptions): UseSwitchboard {
  const latest = useRef(options);
  latest.current = options;
  // Made during render but not connected until the effect: a client React throws away costs nothing.
  const client = useMemo(() => create(latest), [options.url, options.transport]);
  const [state, setState] = useState<State>(client.state);
  const [error, setError] = useState<SwitchboardError | undefined>(undefined);
  useEffect(() => {
    const offState = client.on("state", (s) => {
      setState(s);
      if (s === "open") setError(undefined);
    });
    const offError = client.on("error", setError);
    client.connect();
    setState(client.state);
    return () => {
      offState();
      offError();
      client.close();
    };
  }, [client]);
  return { client, state, error };
}

function create(latest: { current: ClientOptions }): SwitchboardClient {
  // The token is read at each attempt from the latest render's options.
  const token = () => {
    const now = latest.current.token;
    return typeof now === "function" ? now() : now;
  };
  return new SwitchboardClient({ ...latest.current, token });
}

export interface UseChannel {
  /** The server has confirmed the join (on this connection or an earlier one). */
  joined: boolean;
  error: SwitchboardError | undefined;
}

/**
 * Joins `channel` while mounted (nothing when `client` or `channel` is null/undefined); `onEnvelope`
 * runs once per envelope published to it and its return value is the ack. The latest `onEnvelope` is
 * used without re-joining. Unmounting leaves the channel unless something else holds it.
 */
export function useChannel<P = any>(client: SwitchboardClient | null | undefined, channel: string | null | undefined, onEnvelope: (envelope: Envelope<P>) => unknown): UseChannel {
  const handler = useRef(onEnvelope);
  handler.current = onEnvelope;
  const [status, setStatus] = useState<UseChannel>({ joined: false, error: undefined });
  useEffect(() => {
    if (!client || !channel) return;
    setStatus({ joined: false, error: undefined });
    let sub: ChannelSubscription;
    try {
      sub = client.channel<P>(channel, (env) => handler.current(env));
    } catch (e) {
      setStatus({ joined: false, error: e as SwitchboardError });
      return;
    }
    let live = true;
    sub.ready.then(
      () => live && setStatus({ joined: true, error: undefined }),
      (e: SwitchboardError) => live && setStatus({ joined: false, error: e }),
    );
    return () => {
      live = false;
      sub.leave();
    };
  }, [client, channel]);
  return status;
}

export interface UsePresence<D = unknown> {
  /** userId → presence data. A new Map object after every change (safe to use in memo dependencies). */
  members: ReadonlyMap<string, D | undefined>;
  /** How many users are present (exact, also when `members` is truncated to the first 100). */
  count: number;
  /** The members are current for this connection (false while disconnected, until re-synced). */
  synced: boolean;
  /** The last change applied (who joined, who left). */
  last: PresenceChange<D> | undefined;
  error: SwitchboardError | undefined;
}

const EMPTY: UsePresence<any> = { members: new Map(), count: 0, synced: false, last: undefined, error: undefined };

/** Who is in `channel`, kept current while mounted (joins the channel with presence; leaves it on unmount unless something else holds it). */
export function usePresence<D = unknown>(client: SwitchboardClient | null | undefined, channel: string | null | undefined): UsePresence<D> {
  const [view, setView] = useState<UsePresence<D>>(EMPTY);
  useEffect(() => {
    if (!client || !channel) {
      setView(EMPTY);
      return;
    }
    let p: Presence<D>;
    try {
      p = client.presence<D>(channel);
    } catch (e) {
      setView({ ...EMPTY, error: e as SwitchboardError });
      return;
    }
    const presence = p;
    const show = (last?: PresenceChange<D>, error?: SwitchboardError) =>
      setView((prev) => ({ members: new Map(presence.members), count: presence.count, synced: presence.synced, last: last ?? prev.last, error }));
    show();
    const offChange = presence.on("change", (c) => show(c));
    const offError = presence.on("error", (e) => show(undefined, e));
    // Disconnected: the members are kept but no longer current.
    const offState = client.on("state", () => show());
    return () => {
      offChange();
      offError();
      offState();
      presence.close();
    };
  }, [client, channel]);
  return view;
}
