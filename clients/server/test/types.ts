// Type-level tests, compiled (not run) by build.mjs: the publish overloads give each target its answer
// type, and misuse does not compile (each @ts-expect-error must be an error, or the build fails).
import { Switchboard, isFailure, mintToken, verifyWebhook, verifyWebhookEvents, type SwitchboardEvent } from "../dist/index.js";

declare const sb: Switchboard;
export async function check(): Promise<void> {
  const one = await sb.publish({ userId: "a", payload: { x: 1 } });
  const seq: number = one.seq;
  const results: unknown[] = one.results;
  const many = await sb.publish({ userIds: ["a", "b"] });
  const acked: number = many.totals.acked;
  const cut: boolean = many.truncated;
  for (const u of many.users) {
    if (isFailure(u)) continue;
    const partial: true | undefined = u.truncated;
    console.log(u.envelopeId, partial);
    // @ts-expect-error a user's entry has no results of its own (they are in its acks and in many.results)
    console.log(u.results);
  }
  const room = await sb.publish({ channel: "room:1" });
  const truncated: boolean = room.truncated;
  // @ts-expect-error a user publish has no totals
  console.log(one.totals);
  // @ts-expect-error connectionId applies to a single user
  await sb.publish({ userIds: ["a"], connectionId: "c" });
  // @ts-expect-error one target only
  await sb.publish({ userId: "a", channel: "room:1" });
  for await (const page of sb.members("room:1")) console.log(page.members.length, page.nextCursor);
  const token: string = await mintToken({ secret: "s", userId: "a" });
  const event: SwitchboardEvent = verifyWebhook("s", "{}", new Headers());
  if (event.type === "switchboard.connection.closed.v1") {
    const code: number = event.data.code;
    console.log(code);
  }
  if (event.type === "switchboard.client.message.v1") {
    // @ts-expect-error only closed events have a close code
    console.log(event.data.code);
  }
  for (const e of verifyWebhookEvents("s", "[]", new Headers())) {
    if (e.type === "switchboard.user.offline.v1") {
      const onlineAt: string = e.data.onlineAt;
      console.log(onlineAt);
    }
    if (e.type === "switchboard.channel.member.left.v1") {
      // @ts-expect-error a member event's reason is one of five
      const reason: "timeout" = e.data.reason;
      console.log(reason, e.data.channel);
    }
  }
  console.log(seq, results, acked, cut, truncated, token);
}
