/** Running img and qemu-img side by side, in a directory, for the CLI tests. */
import { spawnSync } from 'node:child_process';
import { IMG, RunResult } from '../helpers';

function runIn(cwd: string, cmd: string, args: string[]): RunResult {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 64 << 20 });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** img in a directory (relative file names, as users type them). */
export function imgIn(cwd: string, ...args: string[]): RunResult {
  return runIn(cwd, process.execPath, [IMG, ...args]);
}

export function qemuIn(cwd: string, ...args: string[]): RunResult {
  return runIn(cwd, 'qemu-img', args);
}

/** Runs img and qemu-img with the same arguments in `cwd`. */
export function both(cwd: string, ...args: string[]): { img: RunResult; qemu: RunResult } {
  return { img: imgIn(cwd, ...args), qemu: qemuIn(cwd, ...args) };
}
