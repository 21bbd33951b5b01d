/**
 * The main job: boots a sandbox and runs code in it.
 *
 * @module
 */

console.log("krunbox demo: the sandbox API lands with the qemu backend (issue 4)");
