/**
 * img compare [-f fmt] [-F fmt] [-s] [-q] a b
 * Exit status as qemu-img: 0 identical, 1 different, 2 an error.
 */
import { Command } from 'commander';
import { compareDevices } from '../convert/compare';
import { openImage } from '../formats/index';
import { action } from './command';
import { formatArg, say } from './common';

export const COMPARE_ERROR = 2;

export function register(program: Command): void {
  program
    .command('compare')
    .description('compare the contents of two images')
    .option('-f <fmt>', 'format of the first image (probed when absent)')
    .option('-F <fmt>', 'format of the second image (probed when absent)')
    .option('-s', 'strict: allocation and size differences count too')
    .option('-q, --quiet', 'print nothing; the exit status tells')
    .option('-U, --force-share', 'accepted for compatibility (img takes no locks)')
    .argument('<first>')
    .argument('<second>')
    .action(
      action(COMPARE_ERROR, async ({ opts, args }) => {
        const a = await openImage(args[0], { format: formatArg(opts.f), readOnly: true });
        try {
          const b = await openImage(args[1], { format: formatArg(opts.F), readOnly: true });
          try {
            const r = await compareDevices(a, b, { strict: !!opts.s });
            if (r.sizeMismatch && !opts.s) say(opts, 'Warning: Image size mismatch!\n');
            if (r.equal) {
              say(opts, 'Images are identical.\n');
              return 0;
            }
            if (r.reason === 'size') say(opts, 'Strict mode: Image size mismatch!\n');
            else if (r.reason === 'status') say(opts, `Strict mode: Offset ${r.offset} block status mismatch!\n`);
            else say(opts, `Content mismatch at offset ${r.offset}!\n`);
            return 1;
          } finally {
            await b.close();
          }
        } finally {
          await a.close();
        }
      }),
    );
}
