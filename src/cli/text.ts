/** Numbers as qemu-img prints them for people. */

const SUFFIXES = ['', 'Ki', 'Mi', 'Gi', 'Ti', 'Pi', 'Ei'];

/** C's %.<p>g: `p` significant digits, trailing zeros dropped, exponent form when it is out of range. */
export function formatG(value: number, precision: number): string {
  if (value === 0) return '0';
  const exp = Math.floor(Math.log10(Math.abs(Number(value.toPrecision(precision)))));
  if (exp < -4 || exp >= precision) {
    const [mant, e] = value.toExponential(precision - 1).split('e');
    const m = mant.includes('.') ? mant.replace(/\.?0+$/, '') : mant;
    const n = Number(e);
    return `${m}e${n < 0 ? '-' : '+'}${String(Math.abs(n)).padStart(2, '0')}`;
  }
  const fixed = value.toFixed(Math.max(0, precision - 1 - exp));
  return fixed.includes('.') ? fixed.replace(/\.?0+$/, '') : fixed;
}

/**
 * qemu's size_to_str: three significant digits and a binary unit, switching to the next unit
 * once the number would reach 1000 ("1000 KiB" reads worse than "0.98 MiB").
 */
export function sizeToStr(bytes: number): string {
  let i = 0;
  // frexp(val / (1000/1024)) gives floor(log2(val * 1024/1000)) + 1 as the exponent.
  const scaled = bytes / (1000 / 1024);
  if (scaled >= 1) i = Math.floor((Math.floor(Math.log2(scaled)) + 1 - 1) / 10);
  i = Math.min(i, SUFFIXES.length - 1);
  return `${formatG(bytes / 2 ** (i * 10), 3)} ${SUFFIXES[i]}B`;
}
