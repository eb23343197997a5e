// The Worker's entry module, in front of worker-build's output (build/glue.mjs: the wasm-bindgen glue
// and worker-build's shim, which re-creates every Durable Object after a wasm panic or trap).
//
// It declares the Durable Object classes subclasses of `DurableObject` from "cloudflare:workers":
// workerd lets a stub call an object's own methods over RPC only then, and the internal hops use RPC
// (a method call with plain arguments) instead of a Request and a Response per hop. The classes stay
// worker-build's (its Proxies forward the prototype changes to the wasm-bindgen classes), so its
// recovery is kept; tests/recovery.test.mjs checks it.
import { DurableObject } from "cloudflare:workers";
import worker, { ChannelHub, EventHub, UserHub } from "./glue.mjs";

for (const cls of [UserHub, ChannelHub, EventHub]) {
  Object.setPrototypeOf(cls, DurableObject);
  Object.setPrototypeOf(cls.prototype, DurableObject.prototype);
}

export { ChannelHub, EventHub, UserHub };
export default worker;
