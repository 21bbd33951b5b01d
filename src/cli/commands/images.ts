/**
 * The image store from the CLI: `pull [-q] [--insecure] IMAGE`, `images
 * [--json]`, `rmi IMAGE…`, `prune`.
 *
 * @module
 */

import { Images } from "../../image/images.ts";
import { type CommandSpec, positional } from "../command.ts";
import { eachPositional } from "../exit.ts";
import { ago, humanBytes, table } from "../format.ts";
import type { Command } from "../main.ts";
import { PullProgress, stderrSink } from "../progress.ts";

const pullSpec: CommandSpec = {
  name: "pull",
  usage: "pull [-q] [--insecure] IMAGE",
  maxPositionals: 1,
  summary: "Pull IMAGE into the store and print its manifest digest.",
  options: { quiet: { type: "boolean", short: "q" }, insecure: { type: "boolean" } },
  help: { quiet: "no progress, only the digest", insecure: "plain HTTP to the registry" },
};
/** `krunbox pull`. */
export const pull: Command = {
  spec: pullSpec,
  async run(p) {
    const image = positional(pullSpec, p, 0, "IMAGE");
    const progress = p.values.quiet ? undefined : new PullProgress(stderrSink());
    const img = await Images.pull(image, {
      insecure: p.values.insecure ? true : undefined,
      onProgress: progress ? (e) => progress.event(e) : undefined,
    });
    console.log(img.manifestDigest);
    return 0;
  },
};

const imagesSpec: CommandSpec = {
  name: "images",
  usage: "images [--json]",
  maxPositionals: 0,
  summary: "List the images in the store.",
  options: { json: { type: "boolean" } },
  help: { json: "print JSON (an array)" },
};
/** `krunbox images`. */
export const images: Command = {
  spec: imagesSpec,
  async run(p) {
    const list = await Images.list();
    if (p.values.json) {
      console.log(JSON.stringify(list, null, 2));
      return 0;
    }
    const rows = list.map((i) => [i.reference, i.manifestDigest.slice(0, 19), humanBytes(i.size), ago(i.pulledAt)]);
    console.log(table(["REFERENCE", "DIGEST", "SIZE", "PULLED"], rows));
    return 0;
  },
};

const rmiSpec: CommandSpec = { name: "rmi", usage: "rmi IMAGE [IMAGE...]", options: {} };
/** `krunbox rmi`. */
export const rmi: Command = {
  spec: rmiSpec,
  run: (p) =>
    eachPositional(rmiSpec, p, "IMAGE", async (ref) => {
      await Images.remove(ref);
      console.log(ref);
    }),
};

const pruneSpec: CommandSpec = {
  name: "prune",
  usage: "prune",
  maxPositionals: 0,
  summary: "Remove blobs and layers no stored image uses.",
  options: {},
};
/** `krunbox prune`. */
export const prune: Command = {
  spec: pruneSpec,
  async run() {
    const r = await Images.prune();
    console.log(`removed ${r.images.length} images, ${r.blobs} blobs, ${humanBytes(r.bytesFreed)} freed`);
    return 0;
  },
};
