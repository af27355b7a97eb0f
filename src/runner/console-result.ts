/**
 * Reads the appliance's serial console: kernel and init noise, then the command's output between
 * two markers carrying a per-boot nonce, then its exit status. A guest cannot fake the markers
 * without knowing the nonce, and output that merely resembles them passes through.
 *
 *   IMG-BEGIN-<nonce>\n  <command output>  \nIMG-END-<nonce> <status>\n
 *   IMG-FAIL-<nonce> <message>\n            (init could not get as far as running the command)
 *
 * The newline before IMG-END is init's, not the command's, so the output comes back byte for byte.
 */

export type ConsoleOutcome = { kind: 'status'; status: number } | { kind: 'fail'; message: string };

export class ConsoleResult {
  private readonly begin: Buffer;
  private readonly end: Buffer;
  private readonly fail: Buffer;
  private state: 'boot' | 'run' | 'tail' = 'boot';
  /** The tail being read is a failure message rather than a status. */
  private failing = false;
  private pending: Buffer = Buffer.alloc(0);
  /** Set once the result line has been read. */
  outcome?: ConsoleOutcome;

  /**
   * @param onOutput receives the command's output as it arrives
   * @param onNoise receives everything else the console shows (for --verbose)
   */
  constructor(
    nonce: string,
    private readonly onOutput: (chunk: Buffer) => void,
    private readonly onNoise: (chunk: Buffer) => void = () => {},
  ) {
    this.begin = Buffer.from(`IMG-BEGIN-${nonce}\n`);
    this.end = Buffer.from(`\nIMG-END-${nonce} `);
    this.fail = Buffer.from(`IMG-FAIL-${nonce} `);
  }

  feed(chunk: Buffer): void {
    if (this.outcome) {
      this.onNoise(chunk);
      return;
    }
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    for (;;) {
      const before = this.state;
      if (this.state === 'boot') this.scanBoot();
      else if (this.state === 'run') this.scanRun();
      else this.scanTail();
      if (this.state === before || this.outcome) return;
    }
  }

  /** The console has ended: output held back as a possible marker start was output after all. */
  finish(): void {
    if (this.state === 'run' && this.pending.length) this.onOutput(this.pending);
    this.pending = Buffer.alloc(0);
  }

  private scanBoot(): void {
    const b = this.pending.indexOf(this.begin);
    const f = this.pending.indexOf(this.fail);
    if (f >= 0 && (b < 0 || f < b)) {
      this.onNoise(this.pending.subarray(0, f));
      this.pending = this.pending.subarray(f + this.fail.length);
      this.state = 'tail';
      this.failing = true;
      return;
    }
    if (b >= 0) {
      this.onNoise(this.pending.subarray(0, b));
      this.pending = this.pending.subarray(b + this.begin.length);
      this.state = 'run';
      return;
    }
    this.pending = this.keepTail(this.pending, Math.max(this.begin.length, this.fail.length) - 1, this.onNoise);
  }

  private scanRun(): void {
    const e = this.pending.indexOf(this.end);
    if (e >= 0) {
      if (e > 0) this.onOutput(this.pending.subarray(0, e));
      this.pending = this.pending.subarray(e + this.end.length);
      this.state = 'tail';
      return;
    }
    this.pending = this.keepTail(this.pending, this.end.length - 1, this.onOutput);
  }

  /** The rest of the result line: the status, or the failure message. */
  private scanTail(): void {
    const nl = this.pending.indexOf(0x0a);
    if (nl < 0) {
      if (this.pending.length > 4096) this.finishTail(this.pending.length); // a runaway line: take what there is
      return;
    }
    this.finishTail(nl);
  }

  private finishTail(at: number): void {
    const text = this.pending.subarray(0, at).toString('utf8').replace(/\r$/, '');
    const rest = this.pending.subarray(at + 1);
    this.pending = Buffer.alloc(0);
    if (this.failing) this.outcome = { kind: 'fail', message: text };
    else {
      const status = /^\d{1,3}$/.test(text) ? Number(text) : NaN;
      this.outcome = Number.isInteger(status) && status <= 255 ? { kind: 'status', status } : { kind: 'fail', message: `bad result line '${text}'` };
    }
    if (rest.length) this.onNoise(rest);
  }

  /** Passes on all but the last `keep` bytes (which may be the start of a marker). */
  private keepTail(buf: Buffer, keep: number, sink: (chunk: Buffer) => void): Buffer {
    if (buf.length <= keep) return buf;
    sink(buf.subarray(0, buf.length - keep));
    return Buffer.from(buf.subarray(buf.length - keep));
  }
}
