/*
 * gtinit - a tiny, libc-free /init for the ground-truth initramfs.
 *
 * Builds for x86-64 (gcc -m64) and i386 (gcc -m32) without any libc:
 *   gcc -m64|-m32 -Os -static -nostdlib -ffreestanding -fno-stack-protector \
 *       -fno-pie -no-pie -o init gtinit.c
 *
 * What it does, in order:
 *   1. lowers the console log level (so kernel messages do not interleave),
 *   2. mounts proc on /proc,
 *   3. prints /proc/cpuinfo, /proc/version, /proc/cmdline and /proc/kallsyms
 *      to its stdout (the kernel's /dev/console = ttyS0), each between marker
 *      lines "@@GT-BEGIN <name>@@" / "@@GT-END <name>@@",
 *   4. waits for the tty to drain (TCSBRK) and powers the machine off with
 *      reboot(RB_POWER_OFF).
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

void __attribute__((noreturn, used)) gt_main(void)
{
	/* SYSLOG_ACTION_CONSOLE_LEVEL = 8: only KERN_EMERG reaches the console. */
	sys3(SYS_syslog, 8, 0, 1);
	sys3(SYS_mkdir, "/proc", 0555, 0);
	sys6(SYS_mount, (long)"proc", (long)"/proc", (long)"proc", 0, 0);

	puts_("\n@@GT-INIT-START@@\n");
	dump_file("/proc/version", "version");
	dump_file("/proc/cmdline", "cmdline");
	dump_file("/proc/cpuinfo", "cpuinfo");
	dump_file("/proc/kallsyms", "kallsyms");
	puts_("@@GT-INIT-DONE@@\n");

	/* tcdrain(1): TCSBRK with arg != 0 waits until all output is sent. */
	sys3(SYS_ioctl, 1, 0x5409, 1);
	msleep(200);
	sys3(SYS_sync, 0, 0, 0);
	/* reboot(LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2, LINUX_REBOOT_CMD_POWER_OFF) */
	sys6(SYS_reboot, (long)0xfee1dead, 672274793L, (long)0x4321fedc, 0, 0);
	for (;;)
		sys3(SYS_exit, 0, 0, 0);
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
