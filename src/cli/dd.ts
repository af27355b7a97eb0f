/**
 * img dd [-f fmt] [-O fmt] [bs=N] [count=N] [skip=N] if=input of=output
 * As qemu-img dd, including its reading of count: the input is cut at count×bs bytes from its
 * start, then skip×bs bytes are skipped, so count=4 skip=2 copies two blocks.
 */
import { Command } from 'commander';
import { ImageError } from '../block/errors';
import { writeNewImage } from '../convert/convert';
import { WindowDevice } from '../block/window';
import { findFormat, openImage } from '../formats/index';
import { parseSize } from '../formats/options';
import { action } from './command';
import { formatArg } from './common';

const MAX_BS = 2 ** 31 - 1;

interface Operands {
  bs: number;
  count?: number;
  skip?: number;
  if?: string;
  of?: string;
}

function parseOperands(list: string[]): Operands {
  const ops: Operands = { bs: 512 };
  for (const arg of list) {
    const eq = arg.indexOf('=');
    const key = eq < 0 ? arg : arg.slice(0, eq);
    const value = arg.slice(eq + 1);
    if (eq < 0 || !['bs', 'count', 'skip', 'if', 'of'].includes(key)) throw new ImageError('INVALID_ARGUMENT', `unrecognized operand ${key}`);
    if (key === 'if' || key === 'of') ops[key] = value;
    else if (key === 'bs') {
      ops.bs = parseSize(value, 'bs');
      if (ops.bs < 1 || ops.bs > MAX_BS) throw new ImageError('INVALID_ARGUMENT', `Invalid bs specified. Must be between 1 and ${MAX_BS}.`);
    } else ops[key as 'count' | 'skip'] = parseSize(value, key);
  }
  if (!ops.if || !ops.of) throw new ImageError('INVALID_ARGUMENT', 'Must specify both input and output files');
  return ops;
}

export function register(program: Command): void {
  program
    .command('dd')
    .description('copy part of an image into a new image, dd style')
    .option('-f <fmt>', 'input format (probed when absent)')
    .option('-O <fmt>', 'output format', 'raw')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('<operands...>', 'bs=N count=N skip=N if=FILE of=FILE')
    .action(
      action(1, async ({ opts, args }) => {
        const ops = parseOperands(args);
        const outFormat = findFormat(opts.O as string).name;
        const input = await openImage(ops.if!, { format: formatArg(opts.f), readOnly: true });
        try {
          let end = input.size;
          if (ops.count !== undefined && ops.count * ops.bs < end) end = ops.count * ops.bs;
          let start = 0;
          if (ops.skip !== undefined) {
            if (ops.skip * ops.bs > end) {
              process.stderr.write(`img: ${ops.if}: cannot skip to specified offset\n`);
              start = end;
            } else start = ops.skip * ops.bs;
          }
          await writeNewImage(new WindowDevice(input, start, end - start, { readOnly: true }), ops.of!, outFormat, { options: {} });
        } finally {
          await input.close();
        }
      }),
    );
}
