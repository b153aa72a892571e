using System.Runtime.ExceptionServices;

namespace Altpatch.Tests.Live;

/// <summary>Runs an action on its own thread (a live batch that must wait for another thread); Join rethrows.</summary>
internal sealed class Background : IDisposable
{
    private readonly Thread thread;
    private ExceptionDispatchInfo? error;

    public Background(Action action)
    {
        thread = new Thread(() =>
        {
            try { action(); }
            catch (Exception e) { error = ExceptionDispatchInfo.Capture(e); }
        }) { IsBackground = true, Name = "batch" };
        thread.Start();
    }

    public bool Done => !thread.IsAlive;

    public void Join()
    {
        thread.Join();
        error?.Throw();
    }

    public void Dispose() => thread.Join();
}
