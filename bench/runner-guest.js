#!/usr/bin/env node
'use strict';
// One tiny-guest throughput run for bench/runner.sh: boots the test guest with one disk
// and the bench scenario (1 MiB requests, `depth` in flight) and prints MB/s, timed on the
// host from the guest's "bench start" line to its "bench done" line.
// Usage: runner-guest.js DISK_JSON read|write MIB [DEPTH]
const path = require('node:path');
const root = path.join(__dirname, '..');
const { tinyGuest } = require(path.join(root, 'dist/test/runner/guest.js'));
const { startVm } = require(path.join(root, 'dist/src/runner/vm.js'));

const [disk, mode, mib, depth = '4'] = process.argv.slice(2);
const vm = startVm({
  kernel: tinyGuest(),
  cmdline: `test=bench mode=${mode} mib=${mib} depth=${depth}`,
  memoryMiB: 64,
  timeoutMs: 600_000,
  disks: [JSON.parse(disk)],
});
let out = '';
let start = 0n;
let end = 0n;
vm.console.on('data', (d) => {
  out += d.toString();
  if (!start && out.includes('bench start\n')) start = process.hrtime.bigint();
  if (!end && out.includes('bench done')) end = process.hrtime.bigint();
});
vm.exited.then((e) => {
  const m = /bench done (\d+) errors (\d+)/.exec(out);
  if (e.reason !== 'shutdown' || !m || m[2] !== '0' || !end) {
    console.error(`runner-guest: ${JSON.stringify(e)}\n${out}`);
    process.exit(1);
  }
  const seconds = Number(end - start) / 1e9;
  console.log(((Number(m[1]) * 1048576) / 1e6 / seconds).toFixed(1));
});
