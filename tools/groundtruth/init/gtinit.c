/*
 * gtinit - a tiny, libc-free /init for the ground-truth initramfs.
 *
 * Builds for x86-64 (gcc -m64) and i386 (gcc -m32) without any libc:
 *   gcc -m64|-m32 -Os -static -nostdlib -ffreestanding -fno-stack-protector \
 *       -fno-pie -no-pie -o init gtinit.c
 *
 * What it does, in order:
 *   1. lowers the console log level (so kernel messages do not interleave),
 *   2. mounts proc on /proc and sysfs on /sys,
 *   3. prints, to its stdout (the kernel's /dev/console = ttyS0), each between
 *      marker lines "@@GT-BEGIN <name>@@" / "@@GT-END <name>@@":
 *        version   /proc/version
 *        cmdline   /proc/cmdline
 *        cpuinfo   /proc/cpuinfo
 *        iomem     /proc/iomem (we are root: real addresses, e.g. "Kernel code")
 *        vulns     /sys/devices/system/cpu/vulnerabilities/<x>, one "x: text" per line
 *        dmesg     the whole kernel log buffer (syslog(SYSLOG_ACTION_READ_ALL))
 *        kallsyms  /proc/kallsyms (root: real, possibly KASLR-randomized, addresses)
 *   4. waits for the tty to drain (TCSBRK), prints "@@GT-READY@@" and waits
 *      forever: the host stops the VM over QMP and dumps the running kernel
 *      (boot-and-dump.sh --mode run), or just quits QEMU.
 *      With "gt.poweroff" on the kernel command line it powers the machine off
 *      instead (reboot(RB_POWER_OFF)), as the first version of this init did.
 */

#if defined(__x86_64__)
#define SYS_read 0
#define SYS_write 1
#define SYS_open 2
#define SYS_close 3
#define SYS_ioctl 16
#define SYS_nanosleep 35
#define SYS_exit 60
#define SYS_mkdir 83
#define SYS_syslog 103
#define SYS_sync 162
#define SYS_mount 165
#define SYS_reboot 169
#define SYS_getdents64 217
#define SYS_finit_module 313
static long sys6(long n, long a, long b, long c, long d, long e)
{
	long ret;
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8)
			 : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__i386__)
#define SYS_exit 1
#define SYS_read 3
#define SYS_write 4
#define SYS_open 5
#define SYS_close 6
#define SYS_mount 21
#define SYS_sync 36
#define SYS_mkdir 39
#define SYS_ioctl 54
#define SYS_reboot 88
#define SYS_syslog 103
#define SYS_nanosleep 162
#define SYS_getdents64 220
#define SYS_finit_module 350
static long sys6(long n, long a, long b, long c, long d, long e)
{
	long ret;
	/* Built -fno-pie, so ebx is not the PIC register and can be used directly. */
	__asm__ volatile("int $0x80"
			 : "=a"(ret)
			 : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
			 : "memory");
	return ret;
}
#else
#error "x86 only"
#endif

#define sys3(n, a, b, c) sys6((n), (long)(a), (long)(b), (long)(c), 0, 0)

static unsigned long slen(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

static void out(const char *buf, unsigned long len)
{
	while (len) {
		long w = sys3(SYS_write, 1, buf, len);
		if (w == -4 /* EINTR */ || w == -11 /* EAGAIN */)
			continue;
		if (w <= 0)
			return;
		buf += w;
		len -= (unsigned long)w;
	}
}

static void puts_(const char *s) { out(s, slen(s)); }

static char buf[65536];

static void dump_file(const char *path, const char *name)
{
	long fd, n;
	int last_nl = 1;

	puts_("\n@@GT-BEGIN ");
	puts_(name);
	puts_("@@\n");
	fd = sys3(SYS_open, path, 0 /* O_RDONLY */, 0);
	if (fd < 0) {
		char num[24];
		int i = sizeof(num) - 1;
		unsigned long e = (unsigned long)-fd;
		num[i] = 0;
		do {
			num[--i] = (char)('0' + e % 10);
			e /= 10;
		} while (e && i > 0);
		puts_("@@GT-ERROR cannot open, errno ");
		puts_(num + i);
		puts_("@@\n");
	} else {
		while ((n = sys3(SYS_read, fd, buf, sizeof(buf))) > 0) {
			out(buf, (unsigned long)n);
			last_nl = buf[n - 1] == '\n';
		}
		sys3(SYS_close, fd, 0, 0);
	}
	if (!last_nl)
		puts_("\n");
	puts_("@@GT-END ");
	puts_(name);
	puts_("@@\n");
}

static void msleep(long ms)
{
	long ts[2] = { ms / 1000, (ms % 1000) * 1000000L };
	sys3(SYS_nanosleep, ts, 0, 0);
}

static void begin(const char *name)
{
	puts_("\n@@GT-BEGIN ");
	puts_(name);
	puts_("@@\n");
}

static void end(const char *name)
{
	puts_("@@GT-END ");
	puts_(name);
	puts_("@@\n");
}

/* Appends the contents of path (at most sizeof(buf) bytes) to stdout; returns its length. */
static long cat_small(const char *path)
{
	long fd = sys3(SYS_open, path, 0, 0), n, tot = 0;
	if (fd < 0)
		return fd;
	while ((n = sys3(SYS_read, fd, buf + tot, sizeof(buf) - 1 - (unsigned long)tot)) > 0)
		tot += n;
	sys3(SYS_close, fd, 0, 0);
	out(buf, (unsigned long)tot);
	if (tot == 0 || buf[tot - 1] != '\n')
		puts_("\n");
	return tot;
}

static char dents[16384];
static char path[512];

/* Every regular entry of dir, as "name: contents" lines (one-line sysfs attributes); with all,
 * names starting with '.' too (but "." and ".."): /sys/module/NAME/sections/.text. */
static void dump_dir_(const char *dir, const char *name, int all)
{
	long fd, n;
	begin(name);
	fd = sys3(SYS_open, dir, 0x10000 /* O_DIRECTORY */, 0);
	if (fd >= 0) {
		while ((n = sys3(SYS_getdents64, fd, dents, sizeof(dents))) > 0) {
			long off = 0;
			while (off < n) {
				/* struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; } */
				unsigned short reclen = *(unsigned short *)(dents + off + 16);
				const char *d = dents + off + 19;
				int dots = d[0] == '.' && (d[1] == 0 || (d[1] == '.' && d[2] == 0));
				if (all ? !dots : d[0] != '.') {
					unsigned long dl = slen(dir), nl = slen(d);
					if (dl + nl + 2 < sizeof(path)) {
						for (unsigned long i = 0; i < dl; i++)
							path[i] = dir[i];
						path[dl] = '/';
						for (unsigned long i = 0; i <= nl; i++)
							path[dl + 1 + i] = d[i];
						puts_(d);
						puts_(": ");
						cat_small(path);
					}
				}
				off += reclen;
			}
		}
		sys3(SYS_close, fd, 0, 0);
	}
	end(name);
}

static void dump_dir(const char *dir, const char *name) { dump_dir_(dir, name, 0); }

static void num_(long v)
{
	char num[24];
	int i = sizeof(num) - 1;
	unsigned long e = v < 0 ? (unsigned long)-v : (unsigned long)v;
	num[i] = 0;
	do {
		num[--i] = (char)('0' + e % 10);
		e /= 10;
	} while (e && i > 0);
	if (v < 0)
		num[--i] = '-';
	puts_(num + i);
}

static char order[4096];
static char modname[128];
static char secdir[256];

/*
 * Modules (tools/groundtruth/gtmodules.py): when the initramfs has /modules/order, one line
 * "FILE NAME" per module in load order (dependencies first), each /modules/FILE is loaded with
 * finit_module() ("modload" block: "NAME rc"), then /sys/module/NAME/sections/ is printed as
 * block "sections_NAME" (".text: 0xffffffffc0..." lines) and /proc/modules as "modules".
 */
static void load_modules(void)
{
	long fd = sys3(SYS_open, "/modules/order", 0, 0), n, i = 0;
	if (fd < 0)
		return;
	n = sys3(SYS_read, fd, order, sizeof(order) - 1);
	sys3(SYS_close, fd, 0, 0);
	if (n <= 0)
		return;
	order[n] = 0;
	begin("modload");
	while (i < n) {
		long s = i, e, sp, k;
		while (i < n && order[i] != '\n')
			i++;
		e = i++;
		for (sp = s; sp < e && order[sp] != ' '; sp++)
			;
		if (sp >= e || e - s >= (long)sizeof(path) - 16)
			continue;
		k = 0;
		for (const char *pre = "/modules/"; *pre; pre++)
			path[k++] = *pre;
		for (long j = s; j < sp; j++)
			path[k++] = order[j];
		path[k] = 0;
		k = 0;
		for (long j = sp + 1; j < e && k < (long)sizeof(modname) - 1; j++)
			modname[k++] = order[j];
		modname[k] = 0;
		fd = sys3(SYS_open, path, 0, 0);
		long rc = fd < 0 ? fd : sys6(SYS_finit_module, fd, (long)"", 0, 0, 0);
		if (fd >= 0)
			sys3(SYS_close, fd, 0, 0);
		puts_(modname);
		puts_(" ");
		num_(rc);
		puts_("\n");
	}
	end("modload");
	for (i = 0; i < n;) {
		long s = i, e, sp, k;
		while (i < n && order[i] != '\n')
			i++;
		e = i++;
		for (sp = s; sp < e && order[sp] != ' '; sp++)
			;
		if (sp >= e)
			continue;
		k = 0;
		for (const char *pre = "/sys/module/"; *pre; pre++)
			secdir[k++] = *pre;
		for (long j = sp + 1; j < e && k < (long)sizeof(secdir) - 20; j++)
			secdir[k++] = order[j];
		for (const char *post = "/sections"; *post; post++)
			secdir[k++] = *post;
		secdir[k] = 0;
		k = 0;
		for (const char *pre = "sections_"; *pre; pre++)
			modname[k++] = *pre;
		for (long j = sp + 1; j < e && k < (long)sizeof(modname) - 1; j++)
			modname[k++] = order[j];
		modname[k] = 0;
		dump_dir_(secdir, modname, 1);
	}
	dump_file("/proc/modules", "modules");
}

static char logbuf[1 << 20];

static void dump_dmesg(void)
{
	/* SYSLOG_ACTION_READ_ALL = 3: the whole ring buffer, non-destructively. */
	long n = sys3(SYS_syslog, 3, logbuf, sizeof(logbuf));
	begin("dmesg");
	if (n > 0) {
		out(logbuf, (unsigned long)n);
		if (logbuf[n - 1] != '\n')
			puts_("\n");
	}
	end("dmesg");
}

static int cmdline_has(const char *word)
{
	long fd = sys3(SYS_open, "/proc/cmdline", 0, 0), n;
	unsigned long wl = slen(word);
	if (fd < 0)
		return 0;
	n = sys3(SYS_read, fd, buf, sizeof(buf) - 1);
	sys3(SYS_close, fd, 0, 0);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	for (long i = 0; i + (long)wl <= n; i++) {
		unsigned long k = 0;
		if (i > 0 && buf[i - 1] != ' ')
			continue;
		while (k < wl && buf[i + k] == word[k])
			k++;
		if (k == wl && (buf[i + k] == ' ' || buf[i + k] == '\n' || buf[i + k] == 0))
			return 1;
	}
	return 0;
}

void __attribute__((noreturn, used)) gt_main(void)
{
	/* SYSLOG_ACTION_CONSOLE_LEVEL = 8: only KERN_EMERG reaches the console. */
	sys3(SYS_syslog, 8, 0, 1);
	sys3(SYS_mkdir, "/proc", 0555, 0);
	sys6(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);
	sys3(SYS_mkdir, "/sys", 0555, 0);
	sys6(SYS_mount, (long)"sysfs", (long)"/sys", (long)"sysfs", 0, 0);

	puts_("\n@@GT-INIT-START@@\n");
	dump_file("/proc/version", "version");
	dump_file("/proc/cmdline", "cmdline");
	dump_file("/proc/cpuinfo", "cpuinfo");
	dump_file("/proc/iomem", "iomem");
	dump_dir("/sys/devices/system/cpu/vulnerabilities", "vulns");
	load_modules();
	dump_dmesg();
	dump_file("/proc/kallsyms", "kallsyms");
	puts_("@@GT-INIT-DONE@@\n");

	/* tcdrain(1): TCSBRK with arg != 0 waits until all output is sent. */
	sys3(SYS_ioctl, 1, 0x5409, 1);
	msleep(200);
	sys3(SYS_sync, 0, 0, 0);
	if (cmdline_has("gt.poweroff")) {
		/* reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_POWER_OFF) */
		sys6(SYS_reboot, (long)0xfee1dead, 672274793L, (long)0x4321fedc, 0, 0);
	}
	puts_("@@GT-READY@@\n");
	sys3(SYS_ioctl, 1, 0x5409, 1);
	for (;;)
		msleep(3600 * 1000);
}

/* Entry point: align the stack and call gt_main. */
__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
#if defined(__x86_64__)
	"	xor %rbp, %rbp\n"
	"	and $-16, %rsp\n"
	"	call gt_main\n"
#else
	"	xor %ebp, %ebp\n"
	"	and $-16, %esp\n"
	"	call gt_main\n"
#endif
	"	hlt\n");
