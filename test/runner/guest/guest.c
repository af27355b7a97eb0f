/* The tiny test guest: a freestanding long-mode program loaded as a bzImage. It reads its
 * scenario from the kernel command line (test=NAME plus key=value settings), prints over
 * the UART at 0x3f8, walks PCI bus 0, and drives a legacy virtio-blk device by polling.
 * Every instruction here costs microseconds under a software hypervisor: it moves data
 * with the device and leaves checking the bytes to the host. */
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

void *memset(void *d, int c, u64 n) { u8 *p = d; while (n--) *p++ = (u8)c; return d; }
void *memcpy(void *d, const void *s, u64 n) { u8 *p = d; const u8 *q = s; while (n--) *p++ = *q++; return d; }

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
#define barrier() __asm__ volatile("mfence" ::: "memory")

/* ---- console ---- */
static void putc(char c) { outb(0x3f8, (u8)c); }
static void puts(const char *s) { while (*s) putc(*s++); }
static void puthex(u64 v, int digits) {
  for (int i = digits - 1; i >= 0; i--) putc("0123456789abcdef"[(v >> (4 * i)) & 15]);
}
static void putdec(u64 v) {
  char b[21];
  int n = 0;
  do b[n++] = (char)('0' + v % 10); while (v /= 10);
  while (n) putc(b[--n]);
}

/* ---- command line ---- */
static const char *cmdline;
static const char *arg(const char *key) {
  for (const char *p = cmdline; *p;) {
    const char *k = key, *q = p;
    while (*k && *q == *k) k++, q++;
    if (!*k && *q == '=') return q + 1;
    while (*p && *p != ' ') p++;
    while (*p == ' ') p++;
  }
  return 0;
}
static int is(const char *v, const char *word) {
  while (*word && *v == *word) v++, word++;
  return !*word && (!*v || *v == ' ');
}
static u64 num(const char *key, u64 dflt) {
  const char *v = arg(key);
  if (!v) return dflt;
  u64 n = 0;
  while (*v >= '0' && *v <= '9') n = n * 10 + (u64)(*v++ - '0');
  return n;
}

/* ---- PCI configuration mechanism #1 ---- */
static u32 pci_read(u32 dev, u32 reg) { outl(0xcf8, 0x80000000u | dev << 11 | reg); return inl(0xcfc); }
static void pci_write(u32 dev, u32 reg, u32 v) { outl(0xcf8, 0x80000000u | dev << 11 | reg); outl(0xcfc, v); }

static void pci_list(void) {
  for (u32 dev = 0; dev < 32; dev++) {
    u32 id = pci_read(dev, 0);
    if ((id & 0xffff) == 0xffff) continue;
    puts("pci 00:"); puthex(dev, 2); puts(".0 "); puthex(id & 0xffff, 4); putc(':'); puthex(id >> 16, 4);
    puts(" class "); puthex(pci_read(dev, 8) >> 8, 6);
    puts(" bar0 "); puthex(pci_read(dev, 0x10), 8);
    puts(" irq "); putdec(pci_read(dev, 0x3c) & 0xff); putc('\n');
  }
}

/* ---- legacy virtio-pci block device ---- */
struct desc { u64 addr; u32 len; u16 flags, next; };
struct blk_hdr { u32 type, reserved; u64 sector; };
enum { VP_FEATURES = 0, VP_GUEST_FEATURES = 4, VP_PFN = 8, VP_NUM = 12, VP_SEL = 14, VP_NOTIFY = 16,
       VP_STATUS = 18, VP_ISR = 19, VP_CONFIG = 20 };
enum { F_NEXT = 1, F_WRITE = 2 };
enum { T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8 };
#define SLOTS 16

static u8 vring[3 * 4096] __attribute__((aligned(4096)));
static u8 data[1 << 20] __attribute__((aligned(4096)));
static u8 data2[1 << 16] __attribute__((aligned(4096)));
static struct blk_hdr hdrs[SLOTS];
static volatile u8 statuses[SLOTS];
static u16 io, qnum, last_used;
static struct desc *descs;
static volatile u16 *avail;  /* flags, idx, ring[] */
static volatile u16 *used;   /* flags, idx, then {u32 id, u32 len}[] */

static int blk_init(void) {
  u32 want = (u32)num("disk", 0), seen = 0;
  for (u32 dev = 0; dev < 32; dev++) {
    if (pci_read(dev, 0) != 0x10011af4 || seen++ != want) continue;
    io = (u16)(pci_read(dev, 0x10) & ~3u);
    pci_write(dev, 4, pci_read(dev, 4) | 5); /* I/O decode, bus master */
    outb(io + VP_STATUS, 0);
    outb(io + VP_STATUS, 1);
    outb(io + VP_STATUS, 3);
    u32 f = inl(io + VP_FEATURES);
    outl(io + VP_GUEST_FEATURES, f & (1u << 9)); /* FLUSH */
    outw(io + VP_SEL, 0);
    qnum = inw(io + VP_NUM);
    descs = (struct desc *)vring;
    avail = (volatile u16 *)(vring + 16 * qnum);
    used = (volatile u16 *)(vring + ((16 * qnum + 6 + 2 * qnum + 4095) & ~4095u));
    u64 pfn = (u64)vring >> 12;
    if (arg("pfn")) pfn = num("pfn", 0);
    outl(io + VP_PFN, (u32)pfn);
    outb(io + VP_STATUS, 7);
    puts("blk: features "); puthex(f, 8); puts(" capacity "); putdec(inl(io + VP_CONFIG) | (u64)inl(io + VP_CONFIG + 4) << 32);
    puts(" queue "); putdec(qnum); putc('\n');
    return 1;
  }
  puts("blk: no virtio-blk device\n");
  return 0;
}

/* Fills slot s's three descriptors (header, data, status) and makes it available. */
static void blk_post(u32 s, u32 type, u64 sector, void *buf, u32 len) {
  struct desc *d = descs + 3 * s;
  hdrs[s].type = type;
  hdrs[s].sector = sector;
  statuses[s] = 0xff;
  d[0] = (struct desc){(u64)&hdrs[s], 16, F_NEXT, (u16)(3 * s + 1)};
  d[1] = (struct desc){(u64)buf, len, (u16)(F_NEXT | (type == T_OUT ? 0 : F_WRITE)), (u16)(3 * s + 2)};
  d[2] = (struct desc){(u64)&statuses[s], 1, F_WRITE, 0};
  if (!len) d[0].next = (u16)(3 * s + 2);
  u16 i = avail[1];
  avail[2 + i % qnum] = (u16)(3 * s);
  barrier();
  avail[1] = (u16)(i + 1);
}
static void notify(void) { barrier(); outw(io + VP_NOTIFY, 0); }
/* Waits for one used element; returns its slot. */
static u32 blk_wait(void) {
  while (used[1] == last_used) __asm__ volatile("pause");
  barrier();
  u32 id = *(volatile u32 *)(used + 2 + 4 * (last_used % qnum));
  last_used++;
  inb(io + VP_ISR);
  return id / 3;
}
static u8 blk_do(u32 type, u64 sector, void *buf, u32 len) {
  blk_post(0, type, sector, buf, len);
  notify();
  return statuses[blk_wait()];
}
static u64 sum(const u8 *p, u64 n) {
  u64 s = 0;
  for (u64 i = 0; i + 8 <= n; i += 8) s += *(const u64 *)(p + i);
  return s;
}

/* Reads `sectors` at src, writes them at dst, flushes, reads dst back; GET_ID first. */
static void scenario_blk(void) {
  if (!blk_init()) return;
  u64 src = num("src", 0), dst = num("dst", 1024), n = num("sectors", 16) * 512;
  if (n > sizeof data2) n = sizeof data2;
  u8 id[21] = {0};
  u8 st = blk_do(T_GET_ID, 0, id, 20);
  puts("id status "); putdec(st); puts(" "); puts((const char *)id); putc('\n');
  st = blk_do(T_IN, src, data, (u32)n);
  puts("read status "); putdec(st); puts(" sum "); puthex(sum(data, n), 16); putc('\n');
  st = blk_do(T_OUT, dst, data, (u32)n);
  puts("write status "); putdec(st); putc('\n');
  st = blk_do(T_FLUSH, 0, 0, 0);
  puts("flush status "); putdec(st); putc('\n');
  st = blk_do(T_IN, dst, data2, (u32)n);
  puts("readback status "); putdec(st); puts(" sum "); puthex(sum(data2, n), 16); putc('\n');
  st = blk_do(T_IN, (inl(io + VP_CONFIG) | (u64)inl(io + VP_CONFIG + 4) << 32), data2, 512);
  puts("past end status "); putdec(st); putc('\n');
  st = blk_do(99, 0, data2, 512);
  puts("unknown type status "); putdec(st); putc('\n');
}

/* Sequential 1 MiB requests, `depth` in flight, over `mib` MiB from sector 0. */
static void scenario_bench(void) {
  if (!blk_init()) return;
  u32 type = arg("mode") && is(arg("mode"), "write") ? T_OUT : T_IN;
  u64 total = num("mib", 64), depth = num("depth", 4), next = 0, done = 0;
  if (depth > SLOTS) depth = SLOTS;
  puts("bench start\n");
  for (u32 s = 0; s < depth && next < total; s++) blk_post(s, type, (next++) << 11, data, 1 << 20);
  notify();
  u32 bad = 0;
  while (done < total) {
    u32 s = blk_wait();
    bad += statuses[s] != 0;
    done++;
    if (next < total) {
      blk_post(s, type, (next++) << 11, data, 1 << 20);
      notify();
    }
  }
  puts("bench done "); putdec(done); puts(" errors "); putdec(bad); putc('\n');
}

/* Hostile requests: each should make the host end the VM with an error. */
static void scenario_hostile(const char *kind) {
  if (!blk_init()) return;
  if (is(kind, "baddesc")) {
    blk_post(0, T_IN, 0, (void *)0x7fff00000000ul, 512);
  } else if (is(kind, "loopchain")) {
    blk_post(0, T_IN, 0, data, 512);
    descs[2].flags = F_NEXT;
    descs[2].next = 0;
  } else if (is(kind, "badhead")) {
    blk_post(0, T_IN, 0, data, 512);
    avail[2] = 999;
  } else if (is(kind, "badidx")) {
    avail[1] = (u16)(avail[1] + 1000);
  } else if (is(kind, "badring")) {
    blk_post(0, T_IN, 0, data, 512); /* the PFN (pfn=) put the ring outside RAM */
  }
  puts("hostile request posted\n");
  notify();
  for (;;) __asm__ volatile("pause");
}

static void scenario_ports(void) {
  static const u16 ports[] = {0x1234, 0xdead, 0x80, 0x3e8, 0xcfb, 0xffff};
  u32 x = 0;
  for (u32 i = 0; i < sizeof ports / sizeof ports[0]; i++) {
    outb(ports[i], 0x5a);
    outl(ports[i] & ~3u, 0xdeadbeef);
    x = x << 8 | inb(ports[i]);
  }
  puts("ports ok "); puthex(x, 8); putc('\n');
}

/* Echoes what the host sends until a newline. */
static void scenario_echo(void) {
  puts("echo ready\n");
  for (;;) {
    while (!(inb(0x3fd) & 1)) __asm__ volatile("pause");
    char c = (char)inb(0x3f8);
    putc(c);
    if (c == '\n') return;
  }
}

/* The e820 map the loader left in the zero page. */
static void scenario_e820(const u8 *zp) {
  for (u32 i = 0; i < zp[0x1e8]; i++) {
    const u8 *e = zp + 0x2d0 + 20 * i;
    puts("e820 "); puthex(*(const u64 *)e, 16); putc(' '); puthex(*(const u64 *)(e + 8), 16);
    putc(' '); putdec(*(const u32 *)(e + 16)); putc('\n');
  }
}

void guest_main(const u8 *zero_page) {
  cmdline = (const char *)(u64)*(const u32 *)(zero_page + 0x228);
  puts("guest: "); puts(cmdline); putc('\n');
  const char *t = arg("test");
  if (!t || is(t, "hello")) puts("hello from the tiny guest\n");
  else if (is(t, "pci")) pci_list();
  else if (is(t, "e820")) scenario_e820(zero_page);
  else if (is(t, "blk")) scenario_blk();
  else if (is(t, "bench")) scenario_bench();
  else if (is(t, "ports")) scenario_ports();
  else if (is(t, "echo")) scenario_echo();
  else if (is(t, "spin")) for (;;) __asm__ volatile("" ::: "memory");
  else if (is(t, "halt")) for (;;) __asm__ volatile("cli; hlt");
  else scenario_hostile(t);
  puts("guest: done\n");
}
