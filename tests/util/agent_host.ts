/**
 * Runs the provisioned guest agent in host mode (`serve --listen`) for the
 * protocol tests: the full protocol over a unix socket, without a VM.
 *
 * @module
 */

import { assetPath } from "../../src/store/assets.ts";
import { AgentClient } from "../../src/agent/client.ts";

/** A host-mode agent process and its socket. */
export class HostAgent implements AsyncDisposable {
  private constructor(readonly dir: string, readonly socket: string, readonly process: Deno.ChildProcess) {}

  /** Starts the agent and waits until its socket accepts connections. */
  static async start(): Promise<HostAgent> {
    const dir = await Deno.makeTempDir({ prefix: "krunbox-agent-test-" });
    const socket = `${dir}/agent.sock`;
    const process = new Deno.Command(assetPath("agent"), {
      args: ["serve", "--listen", socket],
      stdout: "inherit",
      stderr: "inherit",
    }).spawn();
    for (let i = 0; i < 200; i++) {
      try {
        (await Deno.connect({ transport: "unix", path: socket })).close();
        return new HostAgent(dir, socket, process);
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    process.kill("SIGKILL");
    throw new Error("the host-mode agent did not listen within 2 s");
  }

  /** A new client connection. */
  connect(): Promise<AgentClient> {
    return AgentClient.connect(this.socket, { timeoutMs: 5000 });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.process.kill("SIGKILL");
    } catch {
      // already gone
    }
    await this.process.status;
    await Deno.remove(this.dir, { recursive: true }).catch(() => {});
  }
}

/** Whether a host process exists (host mode: guest pids are host pids). */
export function processAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !/^\d+ \(.*\) Z/.test(stat);
  } catch {
    return false;
  }
}

/** Polls `cond` until true or `ms` pass. */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return await cond();
}
