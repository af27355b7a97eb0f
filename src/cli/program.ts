/**
 * The img command line: qemu-img's subcommands and options, one module per subcommand.
 * `--debug` anywhere shows stack traces of failures.
 */
import { Command } from 'commander';
import * as amend from './amend';
import * as check from './check';
import * as commit from './commit';
import * as compare from './compare';
import * as convert from './convert';
import * as create from './create';
import * as dd from './dd';
import * as boot from './boot';
import * as demo from './demo';
import * as info from './info';
import * as map from './map';
import * as measure from './measure';
import * as mount from './mount';
import * as rebase from './rebase';
import * as resize from './resize';
import * as snapshot from './snapshot';
import * as serve from './serve';
import * as unmount from './unmount';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { version } = require('../../../package.json') as { version: string };

export function buildProgram(): Command {
  const program = new Command('img')
    .description('disk-image toolkit: qcow2 and raw images, qemu-img compatible')
    .version(version, '-V, --version')
    .option('--debug', 'show stack traces of failures')
    .showHelpAfterError('(run img <command> --help for usage)');
  for (const sub of [create, info, check, convert, compare, map, resize, measure, amend, snapshot, rebase, commit, dd, demo, serve, boot, mount, unmount]) sub.register(program);
  return program;
}

/**
 * A size starting with '-' (img resize file -1G) is a value, not an option: qemu-img takes the
 * last argument of resize as the size whatever it looks like, so end option parsing before it.
 */
export function protectNegativeSize(argv: string[]): string[] {
  const i = argv.indexOf('resize');
  const last = argv.length - 1;
  if (i >= 0 && last > i && /^-\d/.test(argv[last]) && !argv.includes('--')) return [...argv.slice(0, last), '--', argv[last]];
  return argv;
}
